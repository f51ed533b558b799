"""Reproducing the paper: the profiles and their plan (`pipeline`), executing it locally (`steps`, `jobs`,
`processes`) or on Slurm (`slurm`), the worker's run (`worker`), what report notebooks read (`reports`),
reviewer checks (`verify`), dry runs and cost (`dryrun`, `cost`), the paper's numbers (`ledger`), the
index page (`index`), Colab links (`colab`) and the imbalance study (`study`)."""
