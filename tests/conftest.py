import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    # Tiny test models gain nothing from intra-op threads; on a busy 2-core machine spinning threads cost ~10x.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trigger(tmp_path_factory):
    """The trigger classifier of tests/support/trigger.py, trained once per session (~10 s): run_dir with
    checkpoints at steps 40/80/120/160 and model_dir with the final model. Modules load their own copy."""
    from tests.support.trigger import train_trigger
    trained = train_trigger(tmp_path_factory.mktemp("trigger"))
    assert trained.results["test"]["accuracy"] == 1.0
    return trained
