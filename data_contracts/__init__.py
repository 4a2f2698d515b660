"""Pandera contracts for every stage boundary, and the helper that enforces them."""

from data_contracts.schemas import contracts, get_contract
from data_contracts.validation import (
    ContractViolation,
    check_row_accounting,
    empty_quarantine,
    make_quarantine,
    split_quarantine,
    validate_frame,
)

__all__ = [
    "contracts",
    "ContractViolation",
    "check_row_accounting",
    "empty_quarantine",
    "make_quarantine",
    "get_contract",
    "split_quarantine",
    "validate_frame",
]
