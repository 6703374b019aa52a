-- wrk script: POST a fixed completion request (set by environment variables).
local words = tonumber(os.getenv("PROMPT_WORDS") or "100")
local prompt = {}
for i = 1, words do prompt[i] = "word" .. (i % 50) end
wrk.method = "POST"
wrk.path = "/v1/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"model":"bench","prompt":"%s","max_tokens":%s,"ignore_eos":true}',
  table.concat(prompt, " "), os.getenv("MAX_TOKENS") or "32")

local errors = 0
function response(status, headers, body)
  if status ~= 200 then errors = errors + 1 end
end
function done(summary, latency, requests)
  io.write(string.format("non200=%d\n", summary.errors.status))
end
