"""Structured output and tool calling through the real `openai` client against `kiln serve`
(driven by tests/serve.rs: KILN_PORT names the server). Every constrained answer must parse
and validate; the script prints one line of counts and exits non-zero on any failure."""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import List, Literal, Optional

import openai
from pydantic import BaseModel, Field, conlist

c = openai.OpenAI(base_url=f"http://127.0.0.1:{os.environ['KILN_PORT']}/v1", api_key="unused")
MODEL = "default"


def user(text):
    return [{"role": "user", "content": text}]


# 1. `parse` with a Pydantic model: the SDK sends a strict json_schema and parses the answer.
class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population: int = Field(ge=0, le=50_000_000)


parse = getattr(c.chat.completions, "parse", None) or c.beta.chat.completions.parse
r = parse(model=MODEL, messages=user("Describe Paris."), response_format=City, temperature=0, max_tokens=120)
city = r.choices[0].message.parsed
assert isinstance(city, City), r
assert r.choices[0].finish_reason == "stop", r

# 2. JSON mode: any JSON object. Cut by max_tokens (finish_reason "length", as OpenAI's API
# does; the greedy answer runs past 150 tokens on some instruction sets' numerics), the text
# must still be the start of a JSON object: some completion of it parses.
def json_prefix(text):
    stack, in_str, esc = [], False, False
    for ch in text:
        if in_str:
            esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    closers = "".join("}" if o == "{" else "]" for o in reversed(stack))
    for body in (text, text.rstrip().rstrip(",")):
        for mid in ("", "null", ":null", '"":null'):
            try:
                json.loads(body + ('"' if in_str and body is text else "") + mid + closers)
                return True
            except json.JSONDecodeError:
                pass
    return False


r = c.chat.completions.create(
    model=MODEL, messages=user("Give me a JSON object about a cat."), temperature=0, max_tokens=150,
    response_format={"type": "json_object"},
)
text, why = r.choices[0].message.content, r.choices[0].finish_reason
if why == "stop":
    assert isinstance(json.loads(text), dict), text
else:
    assert why == "length" and r.usage.completion_tokens == 150, r
    assert text.lstrip().startswith("{") and json_prefix(text), text
assert not json_prefix('{"a": 1}}') and not json_prefix('{"a" 1') and json_prefix('{"a": "b')

# 3. A function-calling round trip: a forced call, its result, then the final answer.
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}, {
    "type": "function",
    "function": {"name": "get_time", "description": "The time in a city.",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                                "required": ["city"]}},
}]
messages = user("What is the weather in Paris?")
r = c.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="required",
                              temperature=0, max_tokens=100)
ch = r.choices[0]
assert ch.finish_reason == "tool_calls", ch
calls = ch.message.tool_calls
assert calls and ch.message.content is None, ch
for call in calls:
    assert call.type == "function" and call.id
    assert call.function.name in ("get_weather", "get_time"), call
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert args["unit"] in ("celsius", "fahrenheit") and isinstance(args["city"], str), args
messages.append(ch.message.model_dump(exclude_none=True))
for call in calls:
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"})
r = c.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="none",
                              temperature=0, max_tokens=40)
assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r
assert r.choices[0].finish_reason in ("stop", "length"), r

# A named function, one call only.
r = c.chat.completions.create(model=MODEL, messages=user("What time is it in Tokyo?"), tools=tools,
                              tool_choice={"type": "function", "function": {"name": "get_time"}},
                              parallel_tool_calls=False, temperature=0.8, seed=3, max_tokens=120)
calls = r.choices[0].message.tool_calls
assert len(calls) == 1 and calls[0].function.name == "get_time", r
assert isinstance(json.loads(calls[0].function.arguments)["city"], str)

# 4. Streamed tool-call deltas, accumulated as agent frameworks do.
acc = {}
finish = None
for chunk in c.chat.completions.create(model=MODEL, messages=user("Weather in Oslo, in celsius?"), tools=tools,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       temperature=0, max_tokens=80, stream=True):
    d = chunk.choices[0].delta if chunk.choices else None
    if d and d.tool_calls:
        for tc in d.tool_calls:
            a = acc.setdefault(tc.index, {"name": "", "arguments": "", "id": None})
            a["id"] = a["id"] or tc.id
            if tc.function.name:
                a["name"] += tc.function.name
            if tc.function.arguments:
                a["arguments"] += tc.function.arguments
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
assert finish == "tool_calls", finish
assert acc and all(a["name"] == "get_weather" and a["id"] for a in acc.values()), acc
for a in acc.values():
    assert json.loads(a["arguments"])["unit"] in ("celsius", "fahrenheit"), a

# 5. Fifty varied prompts and schemas, run concurrently (one batch in the engine): every
# answer parses and validates.
class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(BaseModel):
    street: str = Field(max_length=40)
    zip: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=120)
    address: Address


class Palette(BaseModel):
    colors: conlist(Color, min_length=1, max_length=4)
    favorite: Color


class Reading(BaseModel):
    celsius: float = Field(ge=-90, le=60)
    humid: bool


class Recipe(BaseModel):
    title: str = Field(max_length=40)
    steps: conlist(str, min_length=1, max_length=3)
    minutes: int = Field(ge=1, le=600)


class Vote(BaseModel):
    choice: Literal["yes", "no", "abstain"]
    reason: Optional[str] = Field(default=None, max_length=60)


class Point(BaseModel):
    x: float = Field(ge=-10, le=10)
    y: float = Field(ge=-10, le=10)


class Shape(BaseModel):
    kind: Literal["triangle", "square"]
    points: conlist(Point, min_length=3, max_length=4)


class Book(BaseModel):
    title: str = Field(max_length=40)
    year: int = Field(ge=1400, le=2030)
    tags: List[Literal["fiction", "history", "science", "poetry"]] = Field(max_length=3)


class Score(BaseModel):
    team: str = Field(max_length=20)
    points: int = Field(ge=0, le=200)
    won: bool


class Scores(BaseModel):
    games: conlist(Score, min_length=1, max_length=3)


class Flag(BaseModel):
    enabled: bool
    level: int = Field(ge=1, le=5)
    label: Literal["low", "mid", "high"]


MODELS = [Person, Palette, Reading, Recipe, Vote, Shape, Book, Scores, Flag, City]
PROMPTS = [
    "Fill in the form.",
    "Answer with data about something you like.",
    "Make up an example.",
    "Describe it briefly.",
    "What would a child say?",
]


def one(k):
    m = MODELS[k % len(MODELS)]
    p = PROMPTS[k // len(MODELS)]
    r = c.chat.completions.create(
        model=MODEL, messages=user(p), max_tokens=300, temperature=0.7 if k % 2 else 0, seed=k,
        response_format={"type": "json_schema",
                         "json_schema": {"name": m.__name__, "schema": m.model_json_schema(), "strict": True}},
    )
    text = r.choices[0].message.content
    try:
        m.model_validate_json(text)
    except Exception as e:  # noqa: BLE001 - reported with the answer
        return f"{m.__name__} / {p!r}: {e}: {text!r} ({r.choices[0].finish_reason})"
    return None


with ThreadPoolExecutor(8) as ex:
    bad = [b for b in ex.map(one, range(50)) if b]
if bad:
    print("\n".join(bad))
    sys.exit(f"{len(bad)} of 50 constrained answers do not validate")

# 6. A bad schema is a 400 naming the field.
try:
    c.chat.completions.create(model=MODEL, messages=user("x"), max_tokens=5, response_format={
        "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}})
    sys.exit("a bad schema was accepted")
except openai.BadRequestError as e:
    assert "response_format" in str(e), e

print("ok: parse, json mode, tool round trip, named call, streamed call, 50 of 50 schemas valid")
