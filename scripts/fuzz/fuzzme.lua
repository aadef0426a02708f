-- Fuzzes the built-in `fuzzme` guest's packet driver (harness/guests/guests/fuzzme.c)
-- from its fuzz point, with libFuzzer driving `lunavm fuzz`:
--
--   lunavm fuzz scripts/fuzz/fuzzme.lua -- -max_total_time=60
--   lunavm fuzz scripts/fuzz/fuzzme.lua --arg fuzzme_cov      # the -fsanitize-coverage build
--
-- The guest stops at ucall FUZZ_POINT before it reads a packet from its
-- "packet device" at ports 0x5f0-0x5f7, which this scenario provides: the
-- fuzzer's input is the packet the device hands over (a device response).

local GUEST = arg[1] or "fuzzme"

fuzz_config = {
  elf = "guest:" .. GUEST,                 -- symbols, block and compare breakpoints
  crash_symbols = { "fuzzme_panic" },      -- the driver's BUG_ON
  fatal_vectors = { 6, 13, 14 },           -- #UD, #GP, #PF handler entries
  max_time = "50ms",                       -- virtual time per input before it is a hang
}

-- Runs once: boot and run to the fuzz point (the snapshot every input starts from).
function fuzz_setup()
  vm.boot{ guest = GUEST, cmdline = "quiet=1" }
  local h = hook.ucall("FUZZ_POINT", function() vm.stop() end)
  local ev = vm.run{ time = "1s" }
  h:remove()
  assert(ev.reason == "hook", "the guest did not reach its fuzz point: " .. ev.reason)
end

local input = ""
local buf, cap = 0, 0

-- Runs in every fuzzing process once the fuzz point is loaded: the device.
function fuzz_start()
  dev.pio{
    base = 0x5f0, size = 8, name = "packet",
    write = function(off, _, v)
      if off == 0 then buf = v elseif off == 4 then cap = v end
    end,
    read = function(off)
      if off ~= 4 then return 0xffffffff end
      local n = math.min(#input, cap)
      if n > 0 then mem.write(buf, input:sub(1, n)) end
      return n
    end,
    save = function() return { buf, cap } end,
    restore = function(s) buf, cap = s[1], s[2] end,
  }
end

-- Runs for each input, after the restore: the device will hand it over.
function fuzz_inject(data)
  input = data
end
