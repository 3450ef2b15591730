"""Made-up items of a few tasks in the standard field names (test data, not from the real sets)."""

from __future__ import annotations

ITEMS: dict[str, tuple[str, list[dict]]] = {
    "arc_easy": (
        "test.jsonl",
        [
            {
                "id": f"q{i}",
                "question": f"Which one is number {i}?",
                "choices": {"text": ["one", "two", "three"], "label": ["A", "B", "C"]},
                "answerKey": "ABC"[i % 3],
            }
            for i in range(5)
        ],
    ),
    "piqa": (
        "validation.jsonl",
        [{"goal": f"Open jar {i}", "sol1": "twist the lid", "sol2": "eat the lid", "label": i % 2} for i in range(4)],
    ),
    "winogrande": (
        "validation.jsonl",
        [
            {"sentence": f"Ann gave Bob {i} apples as _ was kind.", "option1": "Ann", "option2": "Bob", "answer": "1"}
            for i in range(3)
        ],
    ),
    "boolq": (
        "validation.jsonl",
        [{"question": "is it red", "passage": f"The box {i} is red.", "idx": i, "label": 1} for i in range(3)],
    ),
}
