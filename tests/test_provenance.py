from napari_unet.core.provenance import Provenance


def _run(**overrides):
    run = {
        "date": "2025-03-04T10:11:12+00:00",
        "parent": "nuclei-ft1",
        "settings": {"steps": 150, "seed": 7, "learning_rate": 1e-4},
        "samples": ["a.tif[0]", "a.tif[3]", "b.tif[]"],
        "corrected_pixels": 12345,
        "steps_run": 120,
        "seconds": 61.4,
        "comparison": {
            "metric": "AP@0.5",
            "base_score": 0.5,
            "new_score": 0.625,
            "n_items": 40,
            "n_wrong": 9,
            "unit": "objects",
            "verdict": "better",
        },
        "end": "stopped by the user",
    }
    run.update(overrides)
    return run


def test_the_last_run_is_read():
    config = {"parent": "nuclei", "training": {"history": [_run(parent="x"), _run()]}}
    found = Provenance.from_config(config)
    assert found == Provenance(
        parent="nuclei-ft1",
        date="2025-03-04T10:11:12+00:00",
        steps_run=120,
        steps=150,
        seed=7,
        samples=3,
        corrected_pixels=12345,
        seconds=61.4,
        end="stopped by the user",
        metric="AP@0.5",
        base_score=0.5,
        new_score=0.625,
        n_items=40,
        n_wrong=9,
        unit="objects",
        verdict="better",
    )
    assert found.day == "2025-03-04"
    assert found.result() == "better 0.50→0.62"
    assert found.lines() == [
        "from nuclei-ft1, 2025-03-04T10:11:12+00:00",
        "120 of 150 steps in 61 s, seed 7",
        "ended: stopped by the user",
        "3 corrected plane(s), 12,345 corrected pixels",
        "better: AP@0.5 0.500 → 0.625 on 40 held-out objects (9 the parent got wrong)",
    ]


def test_missing_or_malformed_history():
    assert Provenance.from_config({}) is None
    assert Provenance.from_config({"training": {"history": []}}) is None
    assert Provenance.from_config({"training": {"history": ["junk"]}}) is None
    bare = Provenance.from_config(
        {"parent": "nuclei", "training": {"history": [{"comparison": None, "seed": "x"}]}}
    )
    assert bare == Provenance(parent="nuclei")
    assert bare.result() == "not compared"
    assert bare.lines()[-1] == "not compared with its parent (nothing held out)"
    assert bare.lines()[1] == "? steps, seed ?"


def test_scores_on_no_held_out_object_are_not_shown():
    nothing = Provenance(
        parent="nuclei",
        metric="AP@0.5",
        base_score=1.0,
        new_score=1.0,
        n_items=0,
        n_wrong=0,
        unit="objects",
        verdict="too few",
    )
    assert nothing.result() == "too few"
    assert nothing.lines()[-1] == "too few on 0 held-out objects (0 the parent got wrong)"
