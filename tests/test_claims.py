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


def test_one_line_per_cell_holds_the_statements_and_prints_them_once(capsys, monkeypatch):
    from sppo_lite import claims

    monkeypatch.setattr(claims, "_held", [])
    claim(True, "the first holds", x=1)
    claim(True, "the second holds")
    assert capsys.readouterr().out == ""
    claims.flush()
    assert capsys.readouterr().out == "✓ 2 checks hold: the first holds; the second holds\n"
    with pytest.raises(ClaimFailed, match=r"does not show: a third \(y=2\)"):  # a failure still stops, with numbers
        claim(False, "a third", y=2)
    claims.flush()
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("SPPO_LITE_CLAIMS", "report")  # a survey lists every claim
    claim(True, "listed")
    assert capsys.readouterr().out == "✓ listed\n"


def test_a_long_summary_is_shortened_at_a_word():
    from sppo_lite.claims import summary_line

    line = summary_line(["word " * 30, "more words here " * 5])
    assert line.startswith("✓ 2 checks hold: word word") and line.endswith(" …") and len(line) <= 200
    assert summary_line(["one"]) == "✓ 1 check holds: one" and summary_line([]) == ""


def test_one_line_per_cell_is_off_outside_ipython():
    from sppo_lite import claims

    assert claims.one_line_per_cell() is False and claims._held is None
