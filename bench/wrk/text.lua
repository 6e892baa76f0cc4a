-- POSTs one short query per request to /v1/embed/text, cycling through multilingual search
-- queries. With BENCH_UNIQUE=1 each query gets a number appended, so no two requests carry
-- the same text (no cache hits); otherwise the few dozen queries repeat.
package.path = package.path .. ";" .. (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua"
local common = require("common")

local queries = {
  "a photo of a cat", "dog playing in the snow", "sunset over the sea", "birthday cake with candles",
  "una foto de un gato", "perro en la playa", "atardecer en la montaña", "coche rojo aparcado",
  "une photo de la tour Eiffel", "enfants qui jouent au parc", "petit déjeuner sur la terrasse",
  "ein Hund im Schnee", "Familienfoto am Strand", "alte Kirche in der Stadt",
  "un gatto che dorme sul divano", "piatto di pasta al pomodoro", "uma praia com coqueiros",
  "festa de aniversário", "кошка на диване", "зимний лес", "猫の写真", "桜と富士山", "夜の東京",
  "一只狗在草地上", "海边的日落", "生日蛋糕", "고양이 사진", "눈 덮인 산", "قطة على الأريكة",
  "شروق الشمس فوق الصحراء", "बर्फ में कुत्ता", "समुद्र तट पर सूर्यास्त", "kedi kanepede uyuyor",
  "kot na kanapie", "zonsondergang aan zee", "en hund i snön", "γάτα στον καναπέ", "con mèo trên ghế sofa",
  "แมวนอนบนโซฟา", "kucing tidur di sofa",
}
local unique = os.getenv("BENCH_UNIQUE") == "1"
local n = 0
local threads = 0
-- Set per thread by setup(); with the start time it keeps unique queries unique across runs.
tag = "0"

function setup(thread)
  threads = threads + 1
  thread:set("tag", os.time() .. "." .. threads)
end

local function escape(s)
  return (s:gsub('\\', '\\\\'):gsub('"', '\\"'))
end

function request()
  n = n + 1
  local q = queries[(n % #queries) + 1]
  if unique then q = q .. " " .. tag .. "-" .. n end
  local body = '{"texts": ["' .. escape(q) .. '"]}'
  return wrk.format("POST", "/v1/embed/text", { ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  common.report(summary, latency, requests)
end
