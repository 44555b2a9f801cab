"""generate(..., json_schema=...): the output parses and validates against the schema (checked
by the jsonschema package) for 20 random schemas, greedy and sampled; bad schemas raise
ValueError naming json_schema."""

import json
import random

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """An object schema of 1-4 required properties: bounded strings and integers, booleans, enums,
    arrays of a few items, nested objects (finite documents: every generation can end)."""
    def leaf():
        kind = rng.choice(["string", "integer", "boolean", "enum", "array"] + (["object"] if depth < 2 else []))
        if kind == "string":
            return {"type": "string", "maxLength": rng.randint(1, 20)}
        if kind == "integer":
            lo = rng.randint(-100, 100)
            return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 1000)}
        if kind == "boolean":
            return {"type": "boolean"}
        if kind == "enum":
            return {"enum": rng.sample(["red", "green", "blue", "cyan", "magenta", "yes", "no"], rng.randint(1, 4))}
        if kind == "array":
            item = rng.choice([{"type": "string", "maxLength": 8}, {"type": "integer", "minimum": 0, "maximum": 99},
                               {"type": "boolean"}])
            return {"type": "array", "items": item, "minItems": 1, "maxItems": rng.randint(1, 4)}
        return random_schema(rng, depth + 1)

    names = rng.sample(["name", "age", "city", "tags", "ok", "colour", "size", "owner", "items", "note"],
                       rng.randint(1, 4))
    props = {n: leaf() for n in names}
    return {"type": "object", "properties": props, "required": names, "additionalProperties": False}


SCHEMAS = [random_schema(random.Random(seed)) for seed in range(20)]


def _prompt(llm, schema):
    return llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Reply with a JSON object for this schema: {json.dumps(schema)}"}], tokenize=True)


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_output_validates_against_random_schema(llm, index):
    schema = SCHEMAS[index]
    greedy = index % 2 == 0
    out = llm.generate(_prompt(llm, schema), max_new_tokens=200, json_schema=schema,
                       temperature=0.0 if greedy else 1.0, seed=index)
    assert out.finish_reason == "stop", out.text
    jsonschema.validate(json.loads(out.text), schema)


def test_any_json_object_and_stream(llm):
    prompt = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Describe Paris as a JSON object with a name and a country."}], tokenize=True)
    out = llm.generate(prompt, max_new_tokens=200, json_schema=True)
    assert out.finish_reason == "stop" and isinstance(json.loads(out.text), dict)
    schema = SCHEMAS[3]
    pieces = "".join(llm.stream(_prompt(llm, schema), max_new_tokens=200, json_schema=schema))
    assert pieces == llm.generate(_prompt(llm, schema), max_new_tokens=200, json_schema=schema).text
    jsonschema.validate(json.loads(pieces), schema)


@pytest.mark.parametrize("schema,match", [
    ({"type": "objectx"}, "json_schema"),
    ("{not json", "json_schema is not valid JSON"),
    ([1, 2], "json_schema must be a JSON schema"),
])
def test_bad_schema_raises(llm, schema, match):
    with pytest.raises(ValueError, match=match):
        llm.generate("Hi", max_new_tokens=4, json_schema=schema)


def test_json_schema_needs_eos(llm):
    with pytest.raises(ValueError, match="ignore_eos"):
        llm.generate("Hi", max_new_tokens=4, json_schema=True, ignore_eos=True)
