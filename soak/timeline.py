"""One room as one client holds it: docs/protocol.md 9.3, kept by ``seq``.

Pure (no I/O), so the unit tier checks it. A message is kept as a CRC of its
author, ``client_id`` and body, which is enough to tell at the end whether the
client holds exactly what PostgreSQL stored, at 4 bytes a message.
"""

from __future__ import annotations

import zlib
from array import array


def message_crc(author: str | None, client_id: str | None, body: str) -> int:
    """What a message is, for comparing copies: author, client_id, body."""
    text = f"{author or ''}\x00{client_id or ''}\x00{body}"
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


class Timeline:
    """``contiguous``, ``known`` and the messages held, by ``seq``.

    ``contiguous`` is the highest seq such that every seq up to it is held;
    ``known`` the highest seq the server has mentioned (welcome, message,
    ack). Duplicates are dropped by seq, as the protocol asks; a duplicate
    whose content differs from the copy held is a conflict (the server sent
    two different messages under one seq).
    """

    def __init__(self) -> None:
        self.contiguous = 0
        self.known = 0
        self._through = array("I")  # CRC of seq n at index n - 1, n <= contiguous
        self._above: dict[int, int] = {}  # seq -> CRC, held above a gap
        self.duplicates = 0
        self.conflicts: list[int] = []  # seqs received with two contents
        self.resets = 0

    def reset(self) -> None:
        """Forget everything, as a fresh browser tab would: resume from 0."""
        resets = self.resets + 1
        duplicates, conflicts = self.duplicates, self.conflicts
        self.__init__()  # type: ignore[misc]
        self.resets = resets
        self.duplicates, self.conflicts = duplicates, conflicts

    def mention(self, seq: int) -> None:
        """The server said ``seq`` exists (welcome.last_seq, an ack)."""
        if seq > self.known:
            self.known = seq

    def add(self, seq: int, crc: int) -> bool:
        """Hold message ``seq``; False when it was a duplicate."""
        self.mention(seq)
        if seq < 1:
            self.conflicts.append(seq)
            return False
        held = self.crc(seq)
        if held is not None:
            self.duplicates += 1
            if held != crc:
                self.conflicts.append(seq)
            return False
        self._above[seq] = crc
        while self.contiguous + 1 in self._above:
            self._through.append(self._above.pop(self.contiguous + 1))
            self.contiguous += 1
        return True

    def crc(self, seq: int) -> int | None:
        """The CRC held for ``seq``, or None when it is not held."""
        if 1 <= seq <= self.contiguous:
            return self._through[seq - 1]
        return self._above.get(seq)

    @property
    def has_gap(self) -> bool:
        return self.known > self.contiguous

    def held_count(self) -> int:
        return self.contiguous + len(self._above)

    def missing(self, last_seq: int) -> list[int]:
        """Seqs in 1..last_seq not held."""
        return [
            seq
            for seq in range(self.contiguous + 1, last_seq + 1)
            if seq not in self._above
        ]

    def beyond(self, last_seq: int) -> list[int]:
        """Seqs held above ``last_seq``: messages the database does not have."""
        return sorted(seq for seq in self._above if seq > last_seq) + (
            list(range(last_seq + 1, self.contiguous + 1))
            if self.contiguous > last_seq
            else []
        )
