"""The run's log writers: a TensorBoard failure (a full disk) is one line, never the run's error."""

from __future__ import annotations

import errno

from funcnet.train.writers import RunLogger


class _FullDisk:
    def flush(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    close = flush


def test_closing_the_logs_on_a_full_disk_says_so_in_one_line_and_raises_nothing(tmp_path, capsys):
    logger = RunLogger(tmp_path)
    logger.scalars("train", {"loss": 0.5}, step=1)
    logger.close()
    logger.writer = _FullDisk()
    logger.flush()
    logger.close()
    err = capsys.readouterr().err.splitlines()
    assert err == ["note: the TensorBoard logs stopped: [Errno 28] No space left on device"] * 2
