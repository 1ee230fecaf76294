"""Print the CPU micro-benchmarks' table (ours vs reference, with the ratio) at the end of the run and save it."""
from . import report


def pytest_terminal_summary(terminalreporter):
    if not report.ROWS:
        return
    path = report.write(report.ROWS)
    terminalreporter.write_sep("-", "speed against straightforward references (ratio > 1: ours faster)")
    terminalreporter.write(report.markdown(report.ROWS))
    terminalreporter.write_line(f"saved to {path} and perf_cpu.json beside it")
