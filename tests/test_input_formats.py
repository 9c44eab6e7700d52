import io
import json

from jobs.services.input_formats import ParsedItem, Rejection, parse_stream


def parse(text: str | bytes, fmt: str = "jsonl") -> list:
    data = text.encode() if isinstance(text, str) else text
    return list(parse_stream(io.BufferedReader(io.BytesIO(data)), fmt))


def batch_line(cid: str, content: str = "hi", **body: object) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gpt-x", "messages": [{"role": "user", "content": content}], **body}})


def test_openai_batch_lines_keep_their_parameters_but_not_the_model():
    [item] = parse(batch_line("a", "What is 2+2?", max_tokens=5, temperature=0.2) + "\n")
    assert isinstance(item, ParsedItem)
    assert item.custom_id == "a" and item.line_no == 1 and item.prompt == "What is 2+2?"
    assert item.body == {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 5, "temperature": 0.2}


def test_router_scores_the_last_user_message_including_content_parts():
    line = json.dumps({"custom_id": "m", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {}}]}]}})
    [item] = parse(line)
    assert item.prompt == "second"


def test_plain_lines_get_ids_from_the_line_when_missing():
    items = parse('{"id": "x1", "prompt": "one", "max_tokens": 9}\n\n{"prompt": "two", "system": "s"}\n')
    assert [(i.custom_id, i.line_no, i.prompt) for i in items] == [("x1", 1, "one"), ("line-3", 3, "two")]
    assert items[0].body["max_tokens"] == 9
    assert items[1].body["messages"][0] == {"role": "system", "content": "s"}


def test_each_bad_line_is_rejected_with_its_line_number_and_field_and_the_rest_is_kept():
    lines = [
        batch_line("ok1"),
        json.dumps({"custom_id": "u", "method": "POST", "url": "/v1/embeddings",
                    "body": {"messages": [{"role": "user", "content": "x"}]}}),
        "{not json",
        batch_line("ok1"),  # duplicate id
        json.dumps({"custom_id": "r", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "wizard", "content": "x"}]}}),
        '{"prompt": ""}',
        "[1, 2]",
        json.dumps({"custom_id": "s", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "system", "content": "only system"}]}}),
        batch_line("ok2"),
    ]
    out = parse("\n".join(lines) + "\n")
    accepted = [e.custom_id for e in out if isinstance(e, ParsedItem)]
    rejected = {e.line_no: e.reason for e in out if isinstance(e, Rejection)}
    assert accepted == ["ok1", "ok2"]
    assert set(rejected) == {2, 3, 4, 5, 6, 7, 8}
    assert "field 'url'" in rejected[2]
    assert rejected[3].startswith("invalid JSON")
    assert "duplicate custom_id 'ok1' (first on line 1)" in rejected[4]
    assert "field 'body.messages.0.role'" in rejected[5]
    assert "field 'prompt'" in rejected[6]
    assert "expected a JSON object" in rejected[7]
    assert "no user message" in rejected[8]


def test_a_line_that_is_not_utf8_is_rejected_alone():
    data = (batch_line("a") + "\n").encode() + b'{"prompt": "caf\xe9"}\n' + (batch_line("b") + "\n").encode()
    out = parse(data)
    assert [type(e).__name__ for e in out] == ["ParsedItem", "Rejection", "ParsedItem"]
    assert out[1].line_no == 2 and "not UTF-8" in out[1].reason


def test_csv_reports_the_line_a_record_starts_on_even_after_multiline_prompts():
    csv_text = 'id,prompt\n1,"a prompt\nover two lines"\n2,\n3,fine\n4,too,many\n'
    out = parse(csv_text, "csv")
    assert isinstance(out[0], ParsedItem) and out[0].prompt == "a prompt\nover two lines"
    assert (out[1].line_no, type(out[1])) == (4, Rejection)  # empty prompt
    assert (out[2].line_no, out[2].custom_id) == (5, "3")
    assert out[3].line_no == 6 and "columns" in out[3].reason


def test_csv_without_a_prompt_column_is_one_clear_error():
    [rej] = parse("id,text\n1,x\n", "csv")
    assert isinstance(rej, Rejection) and "'prompt' column" in rej.reason


def test_parameters_the_sdk_does_not_know_and_nulls_pass_through_as_written():
    messages = [{"role": "user", "content": "call the tool"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                       "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "user", "content": "and now?"}]
    text = json.dumps({"custom_id": "v", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "x", "messages": messages, "top_k": 20, "repetition_penalty": 1.05, "stop": None,
        "guided_json": {"type": "object"}, "stream": False}})
    [item] = parse(text)
    assert item.body == {"messages": messages, "top_k": 20, "repetition_penalty": 1.05, "stop": None,
                         "guided_json": {"type": "object"}, "stream": False}


def test_stream_true_is_refused_with_the_line_and_the_reason():
    out = parse(batch_line("a") + "\n" + batch_line("s", stream=True) + "\n" + batch_line("b") + "\n")
    assert [type(e).__name__ for e in out] == ["ParsedItem", "Rejection", "ParsedItem"]
    rejected = out[1]
    assert rejected.line_no == 2 and rejected.code == "unsupported_parameter" and rejected.param == "body.stream"
    assert "streaming is not supported in a batch" in rejected.reason


def test_lines_for_other_endpoints_are_refused_one_by_one_saying_why():
    lines = [json.dumps({"custom_id": f"u{i}", "method": "POST", "url": url, "body": body}) for i, (url, body) in
             enumerate([("/v1/embeddings", {"model": "e", "input": "hi"}), ("/v1/completions", {"prompt": "hi"}),
                        ("/v1/responses", {"input": "hi"}), ("/v2/chat", {"messages": []})])]
    out = parse("\n".join([*lines, batch_line("ok")]) + "\n")
    assert isinstance(out[-1], ParsedItem) and out[-1].custom_id == "ok"
    reasons = {e.line_no: e for e in out if isinstance(e, Rejection)}
    assert set(reasons) == {1, 2, 3, 4} and {e.code for e in reasons.values()} == {"invalid_url"}
    assert "'/v1/embeddings' is not routed" in reasons[1].reason and "/v1/chat/completions" in reasons[1].reason
    assert "'/v1/completions' is not routed" in reasons[2].reason
    assert "'/v1/responses' is not routed" in reasons[3].reason
    assert "expected '/v1/chat/completions', got '/v2/chat'" in reasons[4].reason


def test_rejections_carry_an_openai_error_code():
    out = parse('{oops\n' + batch_line("a") + "\n" + batch_line("a") + "\n" +
                json.dumps({"custom_id": "m", "method": "POST", "url": "/v1/chat/completions"}) + "\n")
    codes = [(e.line_no, e.code, e.param) for e in out if isinstance(e, Rejection)]
    assert codes == [(1, "invalid_json_line", None), (3, "duplicate_custom_id", "custom_id"),
                     (4, "missing_required_parameter", "body")]


def test_answer_lengths_are_numbers_as_written_and_within_what_providers_take():
    lines = [
        '{"id": "a", "prompt": "hi", "max_tokens": true}',
        '{"id": "b", "prompt": "hi", "max_tokens": "100"}',
        '{"id": "c", "prompt": "hi", "temperature": "0.5"}',
        '{"id": "d", "prompt": "hi", "max_tokens": 1e40}',
        batch_line("e", max_tokens=10**30),
        batch_line("f", max_completion_tokens=2**70),
        '{"id": "g", "prompt": "hi", "max_tokens": 100, "temperature": 1}',
        batch_line("h", max_tokens=2**31 - 1),
    ]
    out = parse("\n".join(lines) + "\n")
    assert [e.custom_id for e in out if isinstance(e, ParsedItem)] == ["g", "h"]
    rejected = {e.line_no: e.reason for e in out if isinstance(e, Rejection)}
    assert set(rejected) == {1, 2, 3, 4, 5, 6}
    for line_no, field in ((1, "max_tokens"), (2, "max_tokens"), (3, "temperature"), (4, "max_tokens"),
                           (5, "body.max_tokens"), (6, "body.max_completion_tokens")):
        assert f"field '{field}'" in rejected[line_no], rejected[line_no]
    assert "2147483647" in rejected[5]
