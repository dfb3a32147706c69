"""Fixtures shared by the test modules."""
import pytest
import torch

from sppo_lite.modeling import build_tiny_tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models run fastest on one thread: two spin against each other on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny local tokenizer (ByteLevel BPE, Mistral chat template)."""
    return build_tiny_tokenizer()
