"""The report's Merges section (nblab.merge.report) from merge.json files written by hand:
soup minus best, the members' spread and the verdict's words, worked out here. No torch,
no training: a store with two merge runs and one failed merge that must not show."""

from __future__ import annotations

import json
import math

import pytest

from nblab.merge import report
from nblab.runs import RunStore


def _merge_run(store, name, status, data):
    run_id = store.create_run(name, "", "s", steps=0, kind="merge")
    (store.run_dir(run_id) / report.MERGE_JSON).write_text(json.dumps(data))
    store.writer(run_id).close(status)
    return run_id


def _member(name, loss, acc, fmt):
    return {
        "run_id": f"id-{name}",
        "name": name,
        "val_loss": loss,
        "val_accuracy": acc,
        "format": fmt,
    }


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "home")
    nvfp4 = "bf16 (base nvfp4)"
    members = [_member("a", 1.0, 0.5, "bf16"), _member("b", 1.2, 0.25, nvfp4)]
    members.append(_member("c", 1.4, 0.0, nvfp4))
    _merge_run(
        store,
        "merge-uniform",
        "succeeded",
        {"method": "uniform", "members": members, "val_loss": 0.9, "val_accuracy": 0.75},
    )
    _merge_run(
        store,
        "merge-greedy",
        "succeeded",
        {
            "method": "greedy",
            "members": members,
            "taken": ["id-a"],
            "val_loss": 1.0,
            "val_accuracy": 0.5,
        },
    )
    _merge_run(store, "merge-ties", "failed", {"method": "ties", "members": members})
    return store


def test_soup_table_puts_each_soup_beside_its_best_ingredient(store):
    table = report.soup_table("s", store).set_index("merge")
    assert list(table.index) == ["merge-uniform", "merge-greedy"]  # the failed one left out
    uniform = table.loc["merge-uniform"]
    assert uniform.best_member == "a" and uniform.taken == 3
    assert uniform.soup_minus_best == pytest.approx(-0.1)
    assert uniform.exact_match_minus_best == pytest.approx(0.25)
    assert uniform.members_val_loss_sd == pytest.approx(0.2)  # sd of 1.0, 1.2, 1.4
    assert uniform.member_formats == 2
    greedy = table.loc["merge-greedy"]
    assert greedy.taken == 1 and greedy.soup_minus_best == 0


def test_the_verdict_says_which_soup_beat_its_best_ingredient_against_the_spread(store):
    lines = report.verdict("s", store).splitlines()
    assert lines[0].startswith("- **merge-uniform** (uniform, 3 of 3 members) beat its best")
    assert "by 0.1000 val loss" in lines[0] and "spread by 0.2000 (sd): within it" in lines[0]
    assert "exact match 0.750 against 0.500" in lines[0]
    assert "(greedy, 1 of 3 members) equals its best ingredient (a)" in lines[1]
    assert len(lines) == 2
    # members of two formats: the soup against each format's best ingredient
    each = "Across formats, the best ingredient of each: bf16 1.0000, bf16 (base nvfp4) 1.2000"
    assert lines[0].endswith(f"{each}; the soup (0.9000) beat 2 of 2 (bf16, bf16 (base nvfp4)).")
    assert lines[1].endswith(f"{each}; the soup (1.0000) beat 1 of 2 (bf16 (base nvfp4)).")


def test_members_of_one_format_or_without_one_get_no_sentence_across_formats():
    one = {"members": [{"val_loss": 1.0, "format": "bf16"}, {"val_loss": 2.0, "format": "bf16"}]}
    assert report.best_by_format(one) == {}
    two = {"members": [{"val_loss": 1.0, "format": "a"}, {"val_loss": 2.0, "format": "b"}]}
    assert report.best_by_format(two) == {"a": 1.0, "b": 2.0}
    assert report.best_by_format({"members": [{"val_loss": 1.0}, {"val_loss": 2.0}]}) == {}


def test_a_sweep_without_merges_says_so_and_plots_an_empty_figure(tmp_path):
    store = RunStore(tmp_path / "home")
    assert report.soup_table("none", store).empty
    assert report.verdict("none", store).startswith("No merge of this sweep yet")
    assert report.merge_table("none", store).empty
    assert report.plot_merges("none", store).axes[0].texts[0].get_text() == (
        "no merges in this sweep"
    )


def test_merge_table_lists_each_soup_then_its_ingredients_with_what_greedy_took(store):
    table = report.merge_table("s", store)
    greedy = table[table["merge"] == "merge-greedy"]
    assert list(greedy.role) == ["soup", "ingredient", "ingredient", "ingredient"]
    assert list(greedy.taken)[1:] == [True, False, False]
    assert math.isclose(report.plot_merges("s", store).axes[0].get_ylim()[0], 0.9 - 0.5 - 1e-3)
