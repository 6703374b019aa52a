-- wrk script: POST one fixed completion request, set by environment variables:
-- MODEL (bench), PROMPT_WORDS (100), MAX_TOKENS (32), STREAM (false).
local words = tonumber(os.getenv("PROMPT_WORDS") or "100")
local prompt = {}
for i = 1, words do prompt[i] = "word" .. (i % 50) end
wrk.method = "POST"
wrk.path = "/v1/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"model":"%s","prompt":"%s","max_tokens":%s,"ignore_eos":true,"stream":%s}',
  os.getenv("MODEL") or "bench", table.concat(prompt, " "), os.getenv("MAX_TOKENS") or "32",
  os.getenv("STREAM") or "false")

function done(summary, latency, requests)
  io.write(string.format("non200=%d\n", summary.errors.status))
  io.write(string.format("p50_us=%d\np99_us=%d\n", latency:percentile(50), latency:percentile(99)))
end
