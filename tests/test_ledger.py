"""The ledger of paper numbers: only the numbers the reference documents, each with its source;
every other cell present and empty; the comparison rule (tolerance, single source, stand-ins)."""
import math

import pandas as pd
import pytest

from cggmlib.repro import ledger as L
from cggmlib.errors import ConfigError

#: the known paper numbers, exactly: (table, dataset, method, metric) -> (value, single source)
KNOWN = {
    ("table1", "food101", "-", "modalities"): (2, False), ("table1", "mosi", "-", "modalities"): (3, False),
    ("table1", "iemocap", "-", "modalities"): (3, False), ("table1", "brats2021", "-", "modalities"): (4, False),
    ("table2", "food101", "cggm", "acc"): (92.94, False),
    ("table2", "food101", "unimodal.text", "acc"): (84.77, True),
    ("table2", "food101", "unimodal.image", "acc"): (68.24, True),
    ("table3", "brats2021", "cggm", "dice_wt"): (76.94, False),
    ("table3", "brats2021", "cggm", "dice_tc"): (72.75, True),
    ("table3", "brats2021", "cggm", "dice_et"): (72.14, True),
    ("table3", "brats2021", "cggm", "dice_mean"): (73.94, True),
    ("table3", "brats2021", "joint", "dice_mean"): (69.21, True),
    ("table4", "mosi", "cggm", "mae"): (0.747, False),
    ("table4", "iemocap", "cggm", "acc"): (75.38, False),
    ("table4", "iemocap", "unimodal.text", "acc"): (65.35, True),
    ("table4", "iemocap", "unimodal.audio", "acc"): (52.18, True),
    ("table4", "iemocap", "unimodal.vision", "acc"): (54.55, True),
}


@pytest.fixture(scope="module")
def ledger():
    return L.load()


def test_packaged_ledger_holds_exactly_the_documented_numbers_with_sources(ledger):
    known = ledger[ledger["value"].notna()]
    found = {tuple(r[["table", "dataset", "method", "metric"]]): (r["value"], r["single_source"] == "yes")
             for _, r in known.iterrows()}
    assert found == KNOWN
    assert known["source"].str.len().min() > 10


def test_unknown_cells_are_present_and_empty(ledger):
    unknown = ledger[ledger["value"].isna()]
    assert len(unknown) > 200
    assert (unknown["source"] == "").all()
    for table, dataset, method, metric in [("table2", "food101", "joint", "f1"), ("table4", "mosi", "pmr", "acc2"),
                                           ("table5", "iemocap", "cggm", "acc/audio"), ("table6", "iemocap", "cggm.both", "acc"),
                                           ("table8", "brats2021", "cggm", "extra_memory"), ("table7", "mosi", "cggm", "rho")]:
        cell = L.cell(ledger, table, dataset, method, metric)
        assert cell is not None and math.isnan(cell["value"]), (table, dataset, method, metric)
    # every compared method of Sec. 4.3 has a row per metric in Tables 2-4
    methods = set(ledger[(ledger["table"] == "table4") & (ledger["dataset"] == "iemocap")]["method"])
    assert {"joint", "mrd", "mslr", "gblending", "greedy", "ogm", "agm", "pmr", "umt", "ume", "qmf", "reconboost",
            "cggm"} <= methods


@pytest.mark.parametrize("edit, message", [
    ({"value": "92.94", "source": ""}, "needs its source"),
    ({"value": "about 90", "source": "x"}, "not a number"),
    ({"unit": "percent"}, "unit"),
    ({"value": "90", "source": "pdf", "single_source": "maybe"}, "single_source"),
])
def test_check_rejects_bad_rows(tmp_path, edit, message):
    raw = pd.read_csv(L.default_path(), dtype=str, keep_default_na=False)
    row = raw.index[(raw["table"] == "table2") & (raw["method"] == "joint") & (raw["metric"] == "acc")][0]
    for k, v in edit.items():
        raw.loc[row, k] = v
    path = tmp_path / "ledger.csv"
    raw.to_csv(path, index=False)
    with pytest.raises(ConfigError, match=message):
        L.load(path)


def test_duplicate_cells_and_missing_columns_are_reported(tmp_path):
    raw = pd.read_csv(L.default_path(), dtype=str, keep_default_na=False)
    assert any("duplicate" in p for p in L.check(pd.concat([raw, raw.iloc[[5]]])))
    assert "missing columns" in L.check(raw.drop(columns=["source"]))[0]


def test_a_user_filled_cell_is_compared_with_its_own_tolerance(tmp_path):
    raw = pd.read_csv(L.default_path(), dtype=str, keep_default_na=False)
    sel = (raw["table"] == "table2") & (raw["method"] == "joint") & (raw["metric"] == "acc")
    raw.loc[sel, ["value", "source", "single_source", "tolerance"]] = ["90.5", "paper PDF, Table 2", "no", "0.5"]
    path = tmp_path / "mine.csv"
    raw.to_csv(path, index=False)
    cell = L.cell(L.load(path), "table2", "food101", "joint", "acc")
    assert L.compare(cell, 0.908, 0.002)["flag"] == ""            # +0.30 pp, within 0.5
    out = L.compare(cell, 0.915, 0.002)
    assert out["difference"] == "+1.00" and out["flag"] == "beyond ±0.5"
    assert out["ours"] == "91.50 ± 0.20"


def test_compare_units_single_source_and_standins(ledger):
    mae = L.cell(ledger, "table4", "mosi", "cggm", "mae")
    assert L.compare(mae, 0.760)["flag"] == ""                      # 0.013 < 0.02
    assert L.compare(mae, 0.800)["difference"] == "+0.053"
    text = L.cell(ledger, "table2", "food101", "unimodal.text", "acc")
    assert L.compare(text, 0.85)["paper"] == "84.77 †"
    standin = L.compare(text, 0.20, standin=True)
    assert standin["difference"] == L.STANDIN_NOTE and standin["flag"] == "" and standin["ours"].endswith("(stand-in)")
    unknown = L.compare(L.cell(ledger, "table2", "food101", "joint", "f1"), 0.5)
    assert unknown["paper"] == "–" and unknown["difference"] == ""
