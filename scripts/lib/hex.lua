-- lunavm.hex: formatting guest values. Lua integers are 64-bit signed; guest
-- values at or above 2^63 read as negative numbers, and these print them as the
-- unsigned hex the guest sees.
local hex = {}

--- A value as 0x-prefixed unsigned hex ("0x1f").
function hex.u(v)
  return string.format("0x%x", v)
end

--- A value as 16 hex digits ("0x000000000000001f").
function hex.u64(v)
  return string.format("0x%016x", v)
end

--- Bytes as space-separated hex ("de ad be ef").
function hex.bytes(s)
  return (s:gsub(".", function(c) return string.format("%02x ", c:byte()) end):gsub(" $", ""))
end

return hex
