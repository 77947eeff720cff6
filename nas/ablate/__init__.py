"""Ablations of the paper (Sec. 5.2-5.3, Table 5, appendix): variants, the runner, the report."""
