"""The cryptoeconomic layer (paper section 4): accounts and journal, proof-of-stake chain with
shards, node registry and registration stake, SLA escrow, payment channels, and an optional EVM
backend. :class:`~p2pllm_abm.ledger.phase.MarketLedger` wires them into the model's contracts
phase (``ledger.enabled=true``)."""

from .accounts import REASONS, SYSTEM_ACCOUNTS, InsufficientFunds, Ledger
from .chain import KINDS, Chain, draw_proposers, gini, nakamoto_coefficient
from .channels import Channels
from .contracts import SlaBook
from .phase import MarketLedger
from .registry import Registry
from .signatures import ChannelState, Keyring, SignedState

__all__ = ["KINDS", "REASONS", "SYSTEM_ACCOUNTS", "Chain", "ChannelState", "Channels", "InsufficientFunds", "Keyring",
           "Ledger", "MarketLedger", "Registry", "SignedState", "SlaBook", "draw_proposers", "gini",
           "nakamoto_coefficient"]
