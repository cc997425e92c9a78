"""Bad input, property-based (hypothesis): random strings, including control characters, NUL,
lone surrogates, emoji, right-to-left marks, whitespace-only and very long texts, thrown at
`Predictor.predict` and at the server's POST /v1/predict. Either one valid prediction per
text, or the runtime's one-line error (PredictError; a 4xx JSON {"error": ...}); never
another exception, a 500, or a NaN. Plus the explicit bad requests that tests/test_serve.py
does not already cover (it checks the same kinds under small limits; here: the default ones,
bodies sent without a Content-Length, and more ways to be malformed or not UTF-8).

Examples are derandomized, so CI runs the same cases every time."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterator

import pytest
from ftexport_runtime import PredictError, Predictor
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytest.importorskip("httpx")
pytest.importorskip("starlette")

with warnings.catch_warnings():  # Starlette 1.x: "use httpx2 with starlette.testclient"; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from ftexport_runtime.server import ServeConfig, create_app  # noqa: E402

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies ------------------------------------------------------------------------------

SPECIAL = [
    "\x00",
    "\x01",
    "\x07",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u200b",
    "\u200d",
    "\u200e",
    "\u200f",
    "\u202e",
    "\u2066",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "\U0001f600",
    "\U0001f468\u200d\U0001f469",
    "\u0301",
    "\u05e9\u05dc\u05d5\u05dd",
    "\u0645\u0631\u062d\u0628\u0627",
    "\u4e2d\u6587",
    "\r\n",
    "\t",
    "[CLS]",
    "[SEP]",
    "[PAD]",
    "[UNK]",
    "##",
    "good",
    "dull",
    " ",
    "\ud800",
    "\udfff",
    "\udc80",  # lone surrogates: a str can hold them, UTF-8 cannot
]
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2003\u200a\u2028\u2029\u202f\u205f\u3000"

# Any code point, surrogates included (st.characters() leaves category Cs out by default).
any_char = st.characters(exclude_categories=())
short_text = st.one_of(
    st.text(any_char, max_size=200),
    st.lists(st.sampled_from(SPECIAL), max_size=30).map("".join),
    st.text(st.sampled_from(WHITESPACE), max_size=50),  # whitespace-only (and "")
    st.just(""),
)


@st.composite
def long_text(draw: st.DrawFn) -> str:
    """A text of up to 200k characters: a random piece repeated."""
    piece = draw(st.one_of(st.text(any_char, min_size=1, max_size=20), st.sampled_from(["a ", "x", "\U0001f600", "\x00", " "])))
    size = draw(st.integers(1_000, 200_000))
    return (piece * (size // len(piece) + 1))[:size]


texts_strategy = st.lists(st.one_of(short_text, short_text, short_text, long_text()), min_size=1, max_size=10)


def describe(texts: list[str]) -> None:
    """Tally what was tried (pytest --hypothesis-show-statistics)."""
    longest = max(len(t) for t in texts)
    event("longest text " + ("over 100k" if longest > 100_000 else "1k-100k" if longest >= 1000 else "under 1k"))
    event("holds a lone surrogate" if any(has_surrogate(t) for t in texts) else "valid Unicode")


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def check_prediction(p: dict, labels: list[str]) -> None:
    assert set(p) == {"label", "score", "scores"}, p
    assert p["label"] in labels, p
    assert list(p["scores"]) == labels, p
    values = list(p["scores"].values())
    assert all(isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), p
    assert isinstance(p["score"], float) and math.isfinite(p["score"]) and 0.0 <= p["score"] <= 1.0, p
    assert abs(sum(values) - 1.0) < 1e-6, p
    assert p["score"] == p["scores"][p["label"]] == max(values), p


def close(a: list[dict], b: list[dict], atol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(
        x["label"] == y["label"] and all(abs(x["scores"][k] - y["scores"][k]) <= atol for k in x["scores"]) for x, y in zip(a, b)
    )


# --- Predictor.predict -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictors(tiny_run) -> tuple[Predictor, Predictor]:
    """The default variant (what ships and is served) and fp32 (batch-independent scores),
    both with a small max_batch so lists of up to 10 texts are split into several model calls."""
    bundle = tiny_run[1].bundle
    return Predictor.from_bundle(bundle, max_batch=3), Predictor.from_bundle(bundle, variant="fp32", max_batch=3)


@SETTINGS
@given(texts=texts_strategy)
def test_predict_answers_each_text_or_raises_a_one_line_predict_error(predictors, texts):
    describe(texts)
    default, fp32 = predictors
    bad = any(has_surrogate(t) for t in texts)
    results = []
    for call in (default.predict, fp32.predict_batch):
        try:
            got = [p.as_dict() for p in call(texts)]
        except PredictError as e:
            assert bad, f"PredictError on valid Unicode: {e}"
            message = str(e)
            assert message and "\n" not in message and "not valid Unicode" in message, message
            continue
        assert not bad, "a lone surrogate was accepted"
        assert len(got) == len(texts)
        for p in got:
            check_prediction(p, default.labels)
        results.append(got)
    if not bad:
        # fp32: a text's answer does not depend on its batch, its neighbours or the chunking
        alone = [fp32.predict([t])[0].as_dict() for t in texts]
        assert close(results[1], alone, atol=1e-4)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (None, "takes a list of texts, got a NoneType"),
        (5, "takes a list of texts, got a int"),
        (b"good", "got bytes; decode it"),
        (bytearray(b"good"), "got bytearray; decode it"),
        ("good", "got a single string; wrap it in a list"),
        ([], "empty list"),
        ((t for t in []), "empty list"),
        ([b"good"], "text #0 is a bytes, not a string"),
        (["good", None], "text #1 is a NoneType, not a string"),
        (["good", 3.5], "text #1 is a float, not a string"),
        ([["nested"]], "text #0 is a list, not a string"),
        (["fine", "bad \udcff byte"], r"text #1 is not valid Unicode \(a lone surrogate '\\udcff' at position 4\)"),
    ],
)
def test_wrong_types_raise_predict_error(predictors, texts, message):
    with pytest.raises(PredictError, match=message) as e:
        predictors[0].predict(texts)
    assert "\n" not in str(e.value)


def test_other_sequences_of_strings_are_accepted(predictors):
    expected = [p.as_dict() for p in predictors[1].predict(["good", "dull"])]
    for texts in (("good", "dull"), iter(["good", "dull"]), {"good": 1, "dull": 2}):
        assert close([p.as_dict() for p in predictors[1].predict(texts)], expected)


# --- the server: POST /v1/predict through Starlette's TestClient -----------------------------

# texts_strategy sends up to 10 texts: some requests pass the limit of 8.
STORM = ServeConfig(max_batch=8, max_wait_ms=0, queue_size=64, max_text_chars=200_000, max_request_items=8)


@pytest.fixture(scope="module")
def fp32(predictors) -> Predictor:
    return predictors[1]


@pytest.fixture(scope="module")
def storm_client(fp32) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a bug must show up as the 500 a client would get.
    with TestClient(create_app(fp32, STORM), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def default_client(fp32) -> Iterator[TestClient]:
    """The server with its default limits (64 texts of 10,000 characters per request)."""
    with TestClient(create_app(fp32, ServeConfig()), raise_server_exceptions=False) as c:
        yield c


def assert_error(r, status: int | None = None) -> str:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    if status is not None:
        assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert body["error"] and "\n" not in body["error"], body
    return body["error"]


def assert_still_serving(client: TestClient, fp32: Predictor) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    texts = ["the film is wonderful and moving", "the plot is dull and tedious"]
    r = client.post("/v1/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    assert close(r.json()["predictions"], [p.as_dict() for p in fp32.predict(texts)])


def post(client: TestClient, body: bytes):
    return client.post("/v1/predict", content=body, headers={"content-type": "application/json"})


@SETTINGS
@given(texts=texts_strategy, ascii_only=st.booleans())
def test_server_answers_random_texts_or_a_4xx_json_error(storm_client, fp32, texts, ascii_only):
    # ensure_ascii: a lone surrogate travels as the JSON escape "\ud800"; without it, as the
    # bytes ED A0 80 that UTF-8 forbids.
    describe(texts)
    body = json.dumps({"texts": texts}, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    r = post(storm_client, body)
    # the checks come in this order: UTF-8, then the number of texts, then each text
    if any(has_surrogate(t) for t in texts) and not ascii_only:
        assert "not UTF-8" in assert_error(r, 400)
        return
    if len(texts) > STORM.max_request_items:
        assert f"over the limit of {STORM.max_request_items} per request" in assert_error(r, 422)
        return
    if any(has_surrogate(t) for t in texts):
        assert "lone surrogate" in assert_error(r, 422)
        return
    assert r.status_code == 200, r.text[:500]
    got = r.json()["predictions"]
    assert len(got) == len(texts)
    for p in got:
        check_prediction(p, fp32.labels)
    assert close(got, [p.as_dict() for p in fp32.predict(texts)])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(any_char, max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@SETTINGS
@given(
    body=st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),  # any JSON at all
        st.dictionaries(st.sampled_from(["texts", "text", "Texts", ""]), json_values, max_size=3).map(lambda v: json.dumps(v).encode()),
        st.lists(json_values, max_size=12).map(lambda v: json.dumps({"texts": v}).encode()),  # texts of any type
        st.binary(max_size=300),  # any bytes
        st.binary(max_size=50).map(lambda b: b'{"texts": ["' + b + b'"]}'),  # any bytes inside a text
    )
)
def test_server_answers_random_bodies_with_200_or_a_4xx_json_error(storm_client, fp32, body):
    r = post(storm_client, body)
    if r.status_code == 200:
        texts = json.loads(body)["texts"]
        got = r.json()["predictions"]
        assert len(got) == len(texts)
        for p in got:
            check_prediction(p, fp32.labels)
    else:
        assert_error(r)


def test_server_still_serves_after_the_storm(storm_client, fp32):
    # Runs after the property tests above (pytest keeps the file's order) on the same server.
    assert_still_serving(storm_client, fp32)
    stats = storm_client.get("/v1/stats").json()
    assert stats["rejected"] == 0 and stats["queued_texts"] == 0, stats


# --- explicit bad requests, with the default limits --------------------------------------------

TEN_MB = json.dumps({"texts": ["x" * 10_000_000]}).encode()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        # malformed JSON
        (b"", 400, "not valid JSON"),
        (b"   ", 400, "not valid JSON"),
        (b"null x", 400, "not valid JSON"),
        (b'{"texts": ["good"]} trailing', 400, "not valid JSON"),
        (b"{'texts': ['good']}", 400, "not valid JSON"),
        (b'{"texts": ["good",]}', 400, "not valid JSON"),
        (b'{"texts": ["a\x00b"]}', 400, "not valid JSON"),  # a raw control character inside a JSON string
        (b'{"texts": [' + b"1" * 5000 + b"]}", 400, "not valid JSON"),  # past Python's int digit limit
        # not UTF-8
        ('{"texts": ["café"]}'.encode("latin-1"), 400, r"not UTF-8 \(bad byte at position 15\)"),
        ('{"texts": ["good"]}'.encode("utf-16"), 400, r"not UTF-8 \(bad byte at position 0\)"),
        (b'{"texts": ["\xc0\xaf"]}', 400, "not UTF-8"),  # overlong encoding
        (b'{"texts": ["\xed\xa0\x80"]}', 400, "not UTF-8"),  # an encoded surrogate (CESU-8)
        (b'{"texts": ["\xf4\x90\x80\x80"]}', 400, "not UTF-8"),  # past U+10FFFF
        (b'{"texts": ["good\xe2\x82"]}', 400, "not UTF-8"),  # cut inside a character
        (b"\xef\xbb\xbf" + b'{"texts": ["good"]}', 400, "not valid JSON"),  # a UTF-8 byte order mark
        # wrong types
        (b"null", 422, "got null"),
        (b"true", 422, "got a boolean"),
        (b'"texts"', 422, "got a string"),
        (b'{"texts": null}', 422, "got null"),
        (b'{"texts": 3}', 422, "got a number"),
        (b'{"texts": NaN}', 422, "got a number"),
        (b'{"texts": [true]}', 422, r'"texts"\[0\] is a boolean'),
        (b'{"texts": ["good", ["nested"]]}', 422, r'"texts"\[1\] is an array'),
        (b'{"texts": [{"text": "good"}]}', 422, r'"texts"\[0\] is an object'),
        (b'{"texts": [1e999]}', 422, r'"texts"\[0\] is a number'),
        (b'{"texts": ["good"], "extra": 1}', 422, 'unknown field "extra"'),
        (b'{"texts": ["\\udc80\\ud800"]}', 422, "lone surrogate"),
        # empty, and over the limits
        (b'{"texts": []}', 422, '"texts" is empty'),
        (json.dumps({"texts": ["good"] * 65}).encode(), 422, r"65 items, over the limit of 64 per request"),
        (json.dumps({"texts": ["good", "y" * 10_001]}).encode(), 422, r'"texts"\[1\] has 10001 characters, over the limit of 10000'),
        (TEN_MB, 413, r"request body is over \d+ bytes"),
    ],
)
def test_bad_requests_with_default_limits(default_client, fp32, body, status, message):
    error = assert_error(post(default_client, body), status)
    assert re.search(message, error), error
    assert_still_serving(default_client, fp32)


def test_limits_are_inclusive(default_client, fp32):
    texts = ["good"] * 63 + ["z" * 10_000]
    r = default_client.post("/v1/predict", json={"texts": texts})
    assert r.status_code == 200, r.text[:300]
    assert close(r.json()["predictions"], [p.as_dict() for p in fp32.predict(texts)])


def test_ten_megabytes_without_a_content_length_are_refused_while_reading(default_client, fp32):
    # A chunked body: the server cannot refuse it up front, so it counts as it reads.
    sent = []

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(TEN_MB), 1 << 20):
            sent.append(i)
            yield TEN_MB[i : i + (1 << 20)]

    r = default_client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert re.search(r"request body is over \d+ bytes", assert_error(r, 413))
    assert_still_serving(default_client, fp32)


def test_a_lying_content_length_is_refused(default_client, fp32):
    r = default_client.post(
        "/v1/predict", content=b'{"texts": ["good"]}', headers={"content-type": "application/json", "content-length": "999999999"}
    )
    assert_error(r, 413)
    assert_still_serving(default_client, fp32)
