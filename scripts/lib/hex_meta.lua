---@meta lunavm.hex
-- LuaLS annotations for the helper module `require("lunavm.hex")` (the code is
-- lib/hex.lua; this file is never run).

---Formatting guest values: Lua integers are 64-bit signed, so guest values at
---or above 2^63 read as negative numbers; these print the unsigned hex the
---guest sees.
---@class lunavm.hex
local hex = {}

---A value as 0x-prefixed unsigned hex ("0x1f").
---@param v integer
---@return string
function hex.u(v) end

---A value as 16 hex digits ("0x000000000000001f").
---@param v integer
---@return string
function hex.u64(v) end

---Bytes as space-separated hex ("de ad be ef").
---@param s string
---@return string
function hex.bytes(s) end

return hex
