"""Sequence files and synthetic data -> leave-one-out device arrays."""

from awrsr_jax.data.checks import check_trainable
from awrsr_jax.data.dataset import SeqData, build, fingerprint, leave_one_out
from awrsr_jax.data.io import DataFileError, read_sequences, write_sequences
from awrsr_jax.data.synthetic import generate

__all__ = [
    "DataFileError",
    "SeqData",
    "build",
    "check_trainable",
    "fingerprint",
    "generate",
    "leave_one_out",
    "read_sequences",
    "write_sequences",
]
