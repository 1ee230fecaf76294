"""Reports: markdown pages, CSV tables (pandas) and figures (matplotlib) built from run records alone, the top
layer of the suite (stego <- baselines <- benchmarks <- reports). `stego report RESULTS_DIR` runs `build_reports`;
example/ holds one built from the toy benchmark records committed beside it."""
from .pages import build_reports

__all__ = ["build_reports"]
