"""The module-network experiment end to end: both models train from a config, results.json holds both test
splits, a run and its artefact answer a question about a scene alike, and bad requests name their field."""

from __future__ import annotations

import json

import pytest

from funcnet.config import deployment
from funcnet.deploy.requests import predict_requests
from funcnet.experiments import nmn

SMALL = ["-o", "data.train_size=256", "-o", "data.test_size=64", "-o", "trainer.epochs=2", "-o",
         "trainer.progress=false"]  # fmt: skip
QUESTION = {"question": "is there a red shape above a circle?",
            "scene": ["", "red square", "", "", "blue circle", "", "green triangle", "", ""]}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nmn")
    assert nmn.main(["--baseline", "--run-dir", str(folder), *SMALL]) == 0
    return folder


def test_both_models_train_and_report_both_test_splits(runs, capsys):
    for kind in ("nmn", "cnn_lstm"):
        results = json.loads((runs / kind / "results.json").read_text())
        for split in ("validation", "like_training", "systematic"):
            assert results[split]["questions"] == 64 and 0 <= results[split]["accuracy"] <= 1
        assert 1 <= results["shapes_per_epoch"] <= 8 and results["steps"] == 8
    capsys.readouterr()
    assert nmn.main(["--baseline", "--run-dir", str(runs), *SMALL]) == 0  # finished runs: unchanged, table again
    table = capsys.readouterr().out
    assert "results unchanged" in table and "cnn_lstm" in table.splitlines()[-1]


def test_a_run_and_its_artefact_answer_a_question_about_a_scene_alike(runs, tmp_path):
    requests = [QUESTION, {"layout": "exists(or(find[green], transform[left_of](find[square])))", "seed": 4},
                {"question": "is there a blue circle?", "seed": 9}]  # fmt: skip
    served = deployment.served(runs / "nmn", "best")
    answers = predict_requests(served.handler, requests, batch_size=4)
    assert [a["layout"] for a in answers] == [
        "exists(and(find[red], transform[above](find[circle])))",
        "exists(or(find[green], transform[left_of](find[square])))",
        "exists(and(find[blue], find[circle]))",
    ]
    assert all(a["answer"] in ("yes", "no") and 0 <= a["probability"] <= 1 for a in answers)
    artefact = deployment.served(deployment.export_run(runs / "nmn", tmp_path / "artefact"), "best")
    assert predict_requests(artefact.handler, requests, batch_size=4) == answers


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            {"question": "is there a purple circle?", "seed": 1},
            "question: question 'is there a purple circle?': expected a colour or a shape at 'purple'",
        ),
        ({"layout": "exists(find[red]", "seed": 1}, "layout: layout 'exists(find[red]': expected ',' or ')'"),
        ({"layout": "exists(transform[near](find[red]))", "seed": 1}, "layout: layout: transform has no word 'near'"),
        ({"question": "is there a red shape?", "scene": ["red circle"] * 8}, "scene: expected a list of 9 cells"),
        ({"question": "is there a red shape?", "scene": ["red blob"] + [""] * 8}, "scene[0]: expected ''"),
        ({"question": "is there a red shape?"}, "scene: expected a scene, a seed or an image"),
        ({"question": "is there a red shape?", "image": [[0.0]]}, "image: expected shape [30, 30, 3], got [1, 1]"),
        ({"question": "is there a red shape?", "seed": 1, "colour": 2}, "colour: not a field"),
    ],
)
def test_a_bad_request_names_its_field(runs, request_, message):
    served = deployment.served(runs / "nmn", "best")
    [answer] = predict_requests(served.handler, [request_], batch_size=4)
    assert answer["error"].startswith(message), answer


def test_the_baseline_is_not_served(runs):
    with pytest.raises(Exception, match="only module-network runs are served"):
        deployment.served(runs / "cnn_lstm", "best")
