"""File names of the official CIFAR-10 python-pickle directory, shared by its reader and the stand-in's writer.

The reader (:mod:`harness.data.cifar10`) and the writer of the Fashion-MNIST stand-in in that
layout (:mod:`harness.data.standin`) must agree on every name; both import them from here.
"""
DIRNAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
STANDIN_MANIFEST = "STANDIN.json"  # written by harness.data.standin; absent from real CIFAR-10
STANDIN_PARENT = "fashion_mnist_as_cifar10_standin"  # the stand-in's directory in the harness cache
