"""The one interface between wholeip and nf_tables, and its error types.

A backend does two things: list one table (libnftables JSON objects, as
``nft -j list table`` prints them) and run one transaction (a list of
libnftables JSON commands, all applied or none). Two implementations exist:
:mod:`wholeip.nft.libnft` talks to the kernel through the official libnftables
binding; :mod:`wholeip.nft.fake` keeps the state in memory and behaves like the
kernel (atomic, checks references, raises the same errors). One contract test
suite (``tests/nft/test_contract.py``) runs against both.

A backend takes libnftables JSON, not the typed commands of
:mod:`wholeip.nft.commands`: the engine renders each transaction
(``to_json``) just before it sends it. JSON is nf_tables' own interface, so the
fake is held to the kernel on the very input the kernel gets, and a test can
send a command wholeip never would (a foreign rule, a ``create``).

Errors are one hierarchy so callers never parse error strings themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol

from wholeip.nft.doc import Elem, JSONObj, TableDoc


class NftError(Exception):
    """Base of every error a backend raises. ``detail`` is nft's own message."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message if not detail else f"{message}: {detail}")
        self.detail = detail


class NotFound(NftError):
    """A command refers to a table, chain, set or element that does not exist."""


class Exists(NftError):
    """A command creates something that exists already (with ``create``, or an element
    whose key exists with other data)."""


class Rejected(NftError):
    """The transaction was refused for any other reason (bad syntax, wrong types, the kernel
    said no). Nothing of it was applied."""


class Unavailable(NftError):
    """The backend cannot be used at all (no libnftables, no permission, wrong JSON schema)."""


class Backend(Protocol):
    """What the engine needs from nf_tables."""

    def list_table(self, family: str, name: str) -> list[JSONObj] | None:
        """The objects of one table (table, sets and maps with their elements, chains,
        rules), in libnftables JSON form; ``None`` when the table does not exist."""
        ...

    def read_table(
        self, family: str, name: str, *, known: Mapping[str, AbstractSet[Elem]] | None = None
    ) -> TableDoc | None:
        """The table as a full sync compares it: :func:`~wholeip.nft.listing.parse_listing` of
        :meth:`list_table`, however the backend gets there (the kernel's reads elements
        without libnftables, see :mod:`wholeip.nft.netlink`); ``None`` when it does not exist.
        ``known``: sets the table probably holds; a backend may return such a set itself
        where the table holds exactly that (it saves a copy, the result is equal)."""
        ...

    def transact(self, commands: Sequence[JSONObj]) -> None:
        """Apply libnftables JSON commands as one transaction: all or nothing."""
        ...

    def transact_text(self, text: str) -> None:
        """:meth:`transact` of a transaction already written as libnftables JSON text
        (``{"nftables": [...]}``): a new table's fill, 350,000 elements at 100,000 Services,
        written without building the objects first (:func:`~wholeip.nft.commands.as_text`)."""
        ...

    def check(self, commands: Sequence[JSONObj]) -> None:
        """Like :meth:`transact`, changing nothing (``nft --check``): raises what it would raise."""
        ...

    def declare(self, script: str) -> None:
        """Run nft text commands as one transaction. Used only to declare ``typeof``
        sets, which nftables 1.0.6 cannot take in JSON."""
        ...
