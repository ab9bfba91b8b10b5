"""Tables and plots: the seeds' transcribed numbers beside ours from MLflow, sweeps as tables, the MLflow UI.

``paper`` reads ``results/paper/*.yaml``; ``runs`` reads an MLflow store into a DataFrame;
``compare`` joins the two (mean ± 95 % CI over seeds); ``render`` writes md / LaTeX / CSV;
``plots`` draws PNGs (matplotlib Agg); ``ui`` serves the MLflow UI; ``commands`` is the CLI.
"""
