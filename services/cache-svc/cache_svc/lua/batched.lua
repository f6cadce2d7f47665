-- Shared by the functions (it opens the library with publish, before them): runs
-- `command key member...` over `members` in calls of up to 1,000 members (Lua's unpack
-- takes only so many values at once), one call instead of one per row; returns the
-- replies of a command that answers per member (ZMSCORE) in order.
local function batched(command, key, members)
  local out = {}
  for first = 1, #members, 1000 do
    local reply = redis.call(command, key, unpack(members, first, math.min(first + 999, #members)))
    if type(reply) == 'table' then
      for j = 1, #reply do out[#out + 1] = reply[j] end
    end
  end
  return out
end
