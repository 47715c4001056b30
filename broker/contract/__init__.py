"""Service contracts: JSON Schema compiled once by jsonschema-rs, evaluated safely.

``broker.contract.schema`` holds the contract and how its validator is built;
``broker.contract.bounds`` the limits every schema and payload meets first;
``broker.contract.fingerprint`` the digest that names a pair of schemas.
"""

from broker.contract.bounds import MAX_BYTES, MAX_DEPTH
from broker.contract.fingerprint import schema_fingerprint
from broker.contract.schema import MAX_REFERENCES, Contract, compile_contract

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_REFERENCES",
    "Contract",
    "compile_contract",
    "schema_fingerprint",
]
