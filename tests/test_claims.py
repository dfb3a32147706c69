"""claims.claim: a sentence checked by the run."""
import numpy as np
import pytest

from sppo_lite.claims import ClaimFailed, claim, format_numbers


def test_a_supported_claim_prints_its_numbers(capsys):
    assert claim(0.0031 < 0.1 * 0.129, "the average ends below a tenth of its start", avg=0.0031, start=0.129)
    assert capsys.readouterr().out == "✓ the average ends below a tenth of its start (avg=0.0031, start=0.129)\n"


def test_an_unsupported_claim_raises_with_statement_and_numbers():
    with pytest.raises(ClaimFailed, match=r"does not show: DPO collapses \(last=0.45, seeds=8\)"):
        claim(0.45 > 0.99, "DPO collapses", last=0.45, seeds=8)
    with pytest.raises(AssertionError):  # a failed claim fails a notebook like an assert
        claim(np.bool_(False), "numpy booleans count")


def test_numbers_are_readable():
    assert format_numbers({"p": np.array([0.18, 0.29, 0.53]), "n": 2000, "tiny": 1.2e-9, "big": 12345.6,
                           "label": "K=5", "ok": True}) == \
        "p=[0.18, 0.29, 0.53], n=2000, tiny=1.2e-09, big=1.23e+04, label='K=5', ok=True"
