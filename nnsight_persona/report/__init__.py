"""The report of a results folder: one self-contained page (page.py, templates/). `write_report` is
importable from here."""


def __getattr__(name):
    if name == "write_report":
        from .page import write_report

        return write_report
    raise AttributeError(f"module 'nnsight_persona.report' has no attribute {name!r}")
