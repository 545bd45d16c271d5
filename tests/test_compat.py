"""APIs that moved between the dependency versions pyproject.toml allows: each branch of each guarded call.

The oldest versions run for real in `make box-sim` and `make floors` (docs/install.md); these tests pin each
branch on every install, whichever version it has.
"""

from sdft_lab.models import enable_checkpointing


class OldModel:
    """transformers 5.17 (the GPU box's): gradient_checkpointing_enable only."""

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.kwargs = gradient_checkpointing_kwargs


class NewModel:
    """transformers 5.23: activation_checkpointing_enable, the old name a deprecated alias that warns."""

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None):
        self.kwargs = activation_checkpointing_kwargs

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        raise AssertionError("the deprecated alias was called")


def test_checkpointing_on_a_transformers_without_activation_checkpointing_enable():
    """Break it fails on: activation_checkpointing_enable called unguarded (AttributeError on 5.17)."""
    model = OldModel()
    enable_checkpointing(model)
    assert model.kwargs == {"use_reentrant": False}


def test_checkpointing_takes_the_new_name_where_it_exists():
    """Break it fails on: gradient_checkpointing_enable called unguarded (a FutureWarning per model on 5.23)."""
    model = NewModel()
    enable_checkpointing(model)
    assert model.kwargs == {"use_reentrant": False}
