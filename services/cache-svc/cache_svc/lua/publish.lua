-- Shared by the functions that change rows (it opens the library, before them): publishes
-- one message per call, listing the rows it changed as '[id,version]' (or '[id]' for a
-- dropped row) strings.
local function publish(channel, entity, kind, now_ms, rows)
  if #rows > 0 then
    redis.call('PUBLISH', channel, '{"e":"' .. entity .. '","k":"' .. kind .. '","t":' .. now_ms ..
                ',"r":[' .. table.concat(rows, ',') .. ']}')
  end
end
