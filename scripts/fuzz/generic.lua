-- Fuzzes any guest that follows lunavm's fuzzing symbol convention, with no
-- scenario of its own:
--
--   void lunavm_fuzz_point(void);         noinline: called when the input is wanted
--   uint8_t lunavm_fuzz_input[N];         the input goes here (clamped to N bytes)
--   volatile uint32_t lunavm_fuzz_input_len;  and its length here
--
-- A normal end is a debug-exit value or ucall DONE of 0; any other value, a
-- ucall ASSERT, a triple fault and an instruction nobody can run are crashes.
--
--   lunavm fuzz scripts/fuzz/generic.lua --arg guest:fuzzme --arg src=buffer -- -runs=10000
--   lunavm fuzz scripts/fuzz/generic.lua --arg path/to/kernel.elf --arg "cmdline" --arg 128M
--
-- arg[1]: the guest (`guest:NAME` or an ELF path); arg[2]: its command line;
-- arg[3]: guest memory (default 128M). The input is clamped to the size of
-- lunavm_fuzz_input (4096 bytes when the ELF gives none).

local ELF = assert(arg[1], "usage: lunavm fuzz scripts/fuzz/generic.lua --arg ELF [--arg CMDLINE] [--arg MEM]")
local CMDLINE = arg[2] or ""
local MEM = arg[3] or "128M"

fuzz_config = {
  elf = ELF,
  max_time = "100ms",
}

local syms = ELF:match("^guest:(.+)$") and sym.guest(ELF:match("^guest:(.+)$")) or sym.load(ELF)
local point = syms:addr("lunavm_fuzz_point")
local input = syms:addr("lunavm_fuzz_input")
local input_size = syms:size("lunavm_fuzz_input") or 4096
local input_len = syms:addr("lunavm_fuzz_input_len")

function fuzz_setup()
  local boot = { cmdline = CMDLINE, mem = MEM }
  local name = ELF:match("^guest:(.+)$")
  if name then boot.guest = name else boot.kernel = ELF end
  vm.boot(boot)
  local ev = vm.run{ breakpoint = point, time = "10s" }
  assert(ev.reason == "breakpoint", "the guest did not reach lunavm_fuzz_point: " .. ev.reason)
end

function fuzz_inject(data)
  local n = math.min(#data, input_size)
  if n > 0 then mem.vwrite(input, data:sub(1, n)) end
  mem.vwrite32(input_len, n)
end
