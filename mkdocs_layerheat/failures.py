"""Why a block has no figure: one typed value from planning and extraction (and the warm worker, as JSON) to the
page, where it becomes an error box and one `PAGE:LINE: message` warning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    """What went wrong (`message`), what to do about it (`hint`, when there is something to say), and the
    block's place once a page is known."""

    message: str
    hint: str = ""
    page: str = ""
    line: int | None = None

    def at(self, page: str, line: int) -> Failure:
        return dataclasses.replace(self, page=page, line=line)

    def within(self, prefix: str) -> Failure:
        """The same failure said of a part of the block: "in 'compare': ..."."""
        return dataclasses.replace(self, message=prefix + self.message)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}" if self.page else ""

    @property
    def text(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message

    def __str__(self) -> str:
        return f"{self.where}: {self.text}" if self.where else self.text

    def to_json(self) -> dict:
        return {"message": self.message, "hint": self.hint}

    @classmethod
    def from_json(cls, data: dict) -> Failure:
        return cls(str(data["message"]), str(data.get("hint") or ""))
