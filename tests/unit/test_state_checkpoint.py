"""State survives a round trip through the real SQLite checkpointer, and holds no pixels."""

import sqlite3

from graph.builder import build_graph
from checkpoints.saver import database_path, open_checkpointer
from graph.state import merge_attempts

IMAGE = {"path": "images/ab/ab12.png", "sha256": "ab12", "width": 64, "height": 64}
STATE = {
    "request": "fold a crane",
    "run_id": "r1",
    "images": [],
    "input_images": [],
    "plan": [
        {"step_number": 1, "step_name": "Start", "instruction": "A sheet", "prompt": "a sheet", "auxiliary_text": None}
    ],
    "plan_reasoning": "one step",
    "step_index": 0,
    "attempts": [
        {
            "step_number": 1,
            "attempt": 1,
            "prompt": "a sheet",
            "seed": 7,
            "source": None,
            "image": IMAGE,
            "last_allowed": False,
            "verdict": {"success": False, "refine_prompt": "a white sheet", "reasoning": "grey", "error": None},
            "generate_s": 0.5,
            "critique_s": 0.25,
        }
    ],
    "accepted": [],
}


def test_state_round_trips_through_sqlite(tmp_path):
    config = {"configurable": {"thread_id": "r1"}}
    with open_checkpointer(tmp_path) as saver:
        build_graph(saver).update_state(config, STATE, as_node="plan")
    with open_checkpointer(tmp_path) as saver:  # a new connection reads it back
        values = build_graph(saver).get_state(config).values
    for key, value in STATE.items():
        assert values[key] == value, key
    with sqlite3.connect(database_path(tmp_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        blobs = conn.execute("SELECT checkpoint FROM checkpoints").fetchall()
    assert all(b"\x89PNG" not in blob for (blob,) in blobs)


def test_critic_verdict_replaces_the_attempt_it_judges():
    fresh = dict(STATE["attempts"][0], verdict=None)
    judged = STATE["attempts"][0]
    second = dict(fresh, attempt=2)
    assert merge_attempts([fresh], [judged]) == [judged]
    assert merge_attempts([judged], [second]) == [judged, second]


def test_checkpoints_are_compressed_and_old_uncompressed_ones_still_load(tmp_path):
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    from checkpoints.saver import CompressedSerializer

    big = dict(STATE, plan_reasoning="reasoning " * 500)
    kind, blob = CompressedSerializer().dumps_typed(big)
    assert kind.endswith("+zlib") and len(blob) < len(JsonPlusSerializer().dumps_typed(big)[1]) / 5
    assert CompressedSerializer().loads_typed((kind, blob)) == big
    assert CompressedSerializer().loads_typed(JsonPlusSerializer().dumps_typed(big)) == big
