"""The bad-input catalogue: every kind of wrong configuration, data and notebook parameter ends in a
clear error of a documented type (cggmlib.errors) whose message says what to change.

conftest.py prints how many kinds were tried at the end of the run."""
import pickle
import shutil

import h5py
import numpy as np
import papermill as pm
import pytest
import torch

import cggmlib as cg
from cggmlib.data.standins import write_standin
from conftest import ROOT


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    write_standin("mosi", root, train=40, valid=12, test=16, seq_len=10, noalign=False)
    write_standin("iemocap", root, utterances=60, folds=2)
    return root


def config(**kw):
    return lambda _: cg.Config(**({"dataset": "synthetic"} | kw))


def strategy(name, **kw):
    return lambda _: cg.make_strategy(name, **kw)


def cggm_on_one_modality(_):
    data = cg.load_data("synthetic", num_modalities=1, num_samples=100)
    cg.make_strategy("cggm").setup(cg.build_model("synthetic", data), data)


def unknown_unimodal_modality(_):
    data = cg.load_data("synthetic", num_samples=100)
    cg.make_strategy("unimodal", modality="sound").setup(cg.build_model("synthetic", data), data)


def batch_with_other_modality_names(_):
    data = cg.load_data("synthetic", num_samples=100)
    model = cg.build_model("synthetic", data)
    model({"audio": torch.zeros(2, 32), "video": torch.zeros(2, 32), "text": torch.zeros(2, 32)})


def mosi_copy(standins, tmp, edit):
    obj = pickle.loads((standins / "mosi/mosi_data.pkl").read_bytes())
    edit(obj)
    (tmp / "mosi").mkdir(parents=True, exist_ok=True)
    (tmp / "mosi/mosi_data.pkl").write_bytes(pickle.dumps(obj))
    return lambda: cg.load_data("mosi", tmp)


def mosi(edit):
    def case(ctx):
        standins, tmp = ctx
        return mosi_copy(standins, tmp, edit)()
    return case


def mosi_truncated(ctx):
    standins, tmp = ctx
    (tmp / "mosi").mkdir()
    (tmp / "mosi/mosi_data.pkl").write_bytes((standins / "mosi/mosi_data.pkl").read_bytes()[:500])
    cg.load_data("mosi", tmp)


def iemocap(edit):
    def case(ctx):
        standins, tmp = ctx
        shutil.copytree(standins / "iemocap", tmp / "iemocap")
        edit(tmp / "iemocap")
        cg.load_data("iemocap", tmp)
    return case


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def labels_out_of_range(folder):
    path = folder / "target/1/trn_label.npy"
    labels = np.load(path)
    np.save(path, np.concatenate([labels, np.zeros((len(labels), 1), labels.dtype)], axis=1))


def unwritable_results(ctx):
    _, tmp = ctx
    (tmp / "file").write_text("x")
    cg.run_experiment(cg.Config(dataset="synthetic", epochs=1, data_kwargs={"num_samples": 100}),
                      tmp / "file/run", progress=False)


def other_run_in_folder(ctx):
    _, tmp = ctx
    base = dict(dataset="synthetic", epochs=1, data_kwargs={"num_samples": 100})
    cg.run_experiment(cg.Config(**base), tmp / "run", progress=False)
    cg.run_experiment(cg.Config(**base, seed=1), tmp / "run", skip_done=True, progress=False)


def notebook(**parameters):
    def case(ctx):
        _, tmp = ctx
        try:
            pm.execute_notebook(ROOT / "notebooks/00_quickstart.ipynb", tmp / "out.ipynb", kernel_name="python3",
                                parameters=parameters | {"out_dir": str(tmp / "nb"), "threads": 1},
                                progress_bar=False, cwd=str(ROOT))
        except pm.PapermillExecutionError as err:  # the kernel's exception, re-raised as ours for the check
            assert err.ename == "ConfigError", err.ename
            raise cg.ConfigError(err.evalue) from None
    return case


# kind -> (callable(ctx), error type, fragment the message must contain: what to change)
CASES = {
    "config: unknown dataset": (config(dataset="cifar"), cg.ConfigError, "choose from"),
    "config: unknown strategy": (config(strategy="cgm"), cg.ConfigError, "choose from"),
    "config: unknown preset": (config(preset="large"), cg.ConfigError, "choose from"),
    "config: zero epochs": (config(epochs=0), cg.ConfigError, "epochs must be an integer >= 1"),
    "config: negative learning rate": (config(lr=-1e-3), cg.ConfigError, "lr must be > 0"),
    "config: unknown optimizer": (config(optimizer="lamb"), cg.ConfigError, "optimizer must be one of"),
    "config: unknown amp mode": (config(amp="fp8"), cg.ConfigError, "amp must be one of"),
    "config: unknown non-finite policy": (config(nonfinite="ignore"), cg.ConfigError, "nonfinite must be one of"),
    "config: CUDA asked without a GPU": (config(device="cuda:3") if not torch.cuda.is_available() else
                                         config(device="tpu"), cg.ConfigError, "device"),
    "config: unknown field": (lambda _: cg.Config.from_dict({"dataset": "synthetic", "rho": 1}), cg.ConfigError,
                              "unknown Config fields"),
    "config: strategy_kwargs not a dict": (config(strategy_kwargs=[("rho", 1)]), cg.ConfigError, "must be a dict"),
    "strategy: negative rho": (strategy("cggm", rho=-1.0), cg.ConfigError, "rho (ρ) must be a number >= 0"),
    "strategy: negative lambda": (strategy("cggm", lam=-0.2), cg.ConfigError, "lam (λ) must be a number >= 0"),
    "strategy: invalid variant": (strategy("cggm", variant="released"), cg.ConfigError, "variant must be one of"),
    "strategy: negative warm-up": (strategy("cggm", warmup_epochs=-2), cg.ConfigError, "warmup_epochs"),
    "strategy: unknown option": (strategy("cggm", lambda_=0.2), cg.ConfigError, "its options are"),
    "strategy: one modality for CGGM": (cggm_on_one_modality, cg.ConfigError, "at least 2 modalities"),
    "strategy: unknown modality name": (unknown_unimodal_modality, cg.ConfigError, "sound"),
    "model: batch with other modality names": (batch_with_other_modality_names, cg.ConfigError,
                                               "the model expects"),
    "data: unknown dataset option": (lambda _: cg.load_data("synthetic", num_modalites=3), cg.ConfigError,
                                     "its options are"),
    "data: missing dataset folder": (lambda ctx: cg.load_data("mosi", ctx[1] / "nowhere"), cg.DataError,
                                     "data_cards/mosi.md"),
    "data: MOSI pickle with wrong keys": (mosi(lambda o: o.update(training=o.pop("train"))), cg.DataError, "train"),
    "data: MOSI truncated pickle": (mosi_truncated, cg.DataError, "mosi_data.pkl"),
    "data: MOSI NaN labels": (mosi(lambda o: o["train"]["labels"].__setitem__((0, 0, 0), np.nan)), cg.DataError,
                              "labels"),
    "data: MOSI labels out of [-3, 3]": (mosi(lambda o: o["test"]["labels"].__setitem__((1, 0, 0), 7.0)),
                                        cg.DataError, "labels"),
    "data: MOSI empty split": (mosi(lambda o: o["valid"].update({k: v[:0] for k, v in o["valid"].items()})),
                               cg.DataError, "valid"),
    "data: MOSI modalities of different lengths": (mosi(lambda o: o["train"].update(audio=o["train"]["audio"][:-3])),
                                                   cg.DataError, "audio"),
    "data: MOSI wrong feature rank": (mosi(lambda o: o["train"].update(text=o["train"]["text"][:, 0])), cg.DataError,
                                      "text"),
    "data: IEMOCAP truncated h5": (iemocap(lambda f: truncate(f / "V/denseface.h5")), cg.DataError, "denseface.h5"),
    "data: IEMOCAP missing label file": (iemocap(lambda f: (f / "target/1/val_label.npy").unlink()), cg.DataError,
                                         "val_label.npy"),
    "data: IEMOCAP labels out of range": (iemocap(labels_out_of_range), cg.DataError, "trn_label.npy"),
    "data: IEMOCAP fold that does not exist": (lambda ctx: cg.load_data("iemocap", ctx[0], fold=11),
                                               (cg.ConfigError, cg.DataError), "fold"),
    "results: folder cannot be created": (unwritable_results, cg.ResultsError, "choose a writable --out folder"),
    "results: folder holds another run": (other_run_in_folder, cg.ResultsError, "choose another --out folder"),
    "notebook: zero seeds parameter": (notebook(seeds=0, epochs=1), cg.ConfigError, "seeds must be an integer >= 1"),
    "notebook: zero epochs parameter": (notebook(epochs=0), cg.ConfigError, "epochs must be an integer >= 1"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_input(kind, standins, tmp_path):
    run, error, fragment = CASES[kind]
    with pytest.raises(error) as err:
        run((standins, tmp_path))
    message = str(err.value)
    assert fragment in message, f"{kind}: {message}"
    assert isinstance(err.value, cg.CGGMError)
    assert "Traceback" not in message and len(message) > 20
