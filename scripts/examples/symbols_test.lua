-- Guest symbols (sym.*): name to address, address to name+offset, and
-- backtraces, on the built-in `watch` guest (its bump(i) is a noinline
-- function guest_main calls once per round). The Linux kernel's symbols and
-- frame-pointer backtraces are in linux_test.lua and linux_panic_test.lua.
local guest = require("lunavm.guest")

budget = { time = "1s", wall = "20s" }

function test_names_and_addresses()
  local s = sym.guest("watch")
  t.eq(s.source, "guest:watch")
  t.ok(s.count > 10, "symbols: " .. s.count)
  local bump = s:addr("bump")
  t.eq(s:lookup("bump"), bump)
  t.eq(s:lookup("no_such_symbol"), nil)
  t.eq(s:resolve(bump), "bump")
  local str, name, off = s:resolve(bump + 3)
  t.eq(str, "bump+0x3")
  t.eq(name, "bump")
  t.eq(off, 3)
  -- `watched` is data: it has an address but code never resolves to it.
  local watched = s:addr("watched")
  t.neq(s:resolve(watched), "watched")
  local msg = guest.expect_error(function() return s:addr("no_such_symbol") end)
  t.match(msg, 'symbols_test%.lua:%d+: sym:addr: no symbol "no_such_symbol" in guest:watch')
  msg = guest.expect_error(sym.load, "/nonexistent/System.map")
  t.match(msg, "sym%.load: Cannot read the symbol file /nonexistent/System%.map")
  msg = guest.expect_error(sym.guest, "nope")
  t.match(msg, 'no built%-in guest "nope"')
end

function test_a_breakpoint_by_name_and_its_backtrace()
  local s = sym.guest("watch")
  vm.boot{guest = "watch", cmdline = "rounds=2"}
  local ev = vm.run{breakpoint = s:addr("bump")}
  t.eq(ev.reason, "breakpoint")
  t.eq(s:resolve(ev.rip), "bump")
  t.eq(cpu.get("rdi"), 1, "bump(1)")
  -- At a function's first instruction the caller is read from the stack top.
  local bt = sym.backtrace(s, {max = 2})
  t.eq(#bt, 2)
  t.eq(bt[1].addr, ev.rip)
  t.eq(bt[1].symbol, "bump")
  t.eq(bt[1].offset, 0)
  t.eq(bt[2].name, "guest_main")
  t.eq(bt[2].addr, mem.vread64(cpu.get("rsp")), "the return address")
  t.eq(bt[2].symbol, string.format("guest_main+0x%x", bt[2].addr - s:addr("guest_main")))
  -- The guest is built without frame pointers: with rbp=0 the walk ends there.
  bt = s:backtrace{rbp = 0}
  t.eq(#bt, 2)
  t.eq(#s:backtrace{max = 1}, 1)
  -- An address no symbol holds is shown in hex.
  bt = s:backtrace{rip = 0x10, rbp = 0, max = 4}
  t.eq(bt[1].symbol, "0x10")
  t.eq(bt[1].name, nil)
  local msg = guest.expect_error(sym.backtrace, s, {max = -1})
  t.match(msg, "max=%-1 is not between 0 and 4096")
  guest.finish(0)
end
