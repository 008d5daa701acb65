"""Counting the files a piece of code reads: each file once is what check-data and train's split links
promise (a network share pays for each reading)."""

from eyescreen import preprocess


def counting_reads(monkeypatch, *modules) -> list[str]:
    """The list that every file read through `read_file` is added to, from now until `monkeypatch` is
    undone: the image cache's own reading, and that of `modules`, which import read_file by name. Use a
    `monkeypatch.context()`: undoing the test's own monkeypatch would undo its isolated cache too."""
    reads: list[str] = []
    original = preprocess.read_file

    def counted(path):
        reads.append(str(path))
        return original(path)

    for module in (preprocess, *modules):
        monkeypatch.setattr(module, "read_file", counted)
    return reads
