"""Version numbers stored with every unit, checkpoint and result, in one place.

Bump one when the meaning of what it versions changes, so an old record is never read as a
new one: ``CONFIG_VERSION`` when a config key changes meaning (stored in every checkpoint),
``HASH_VERSION`` when the trainer's arithmetic changes (part of every unit hash, so old units
are not reused), ``PROTOCOL_VERSION`` when the evaluation protocol changes (in every result).
"""
CONFIG_VERSION = 1
HASH_VERSION = 2   # 2: the forward RNG (dropout, token masks) is re-seeded per (seed, step, rank)
PROTOCOL_VERSION = "1"
