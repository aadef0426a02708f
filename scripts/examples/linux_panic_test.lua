-- A kernel panic caught by a breakpoint on `panic` and reported with a
-- symbolised frame-pointer backtrace. The test-suite kernel boots with a
-- root device that does not exist (`root=/dev/vdz`, no initramfs, no disk):
-- it panics in prepare_namespace ("VFS: Unable to mount root fs"). One quiet
-- boot (~2.7 s of virtual time) in setup_once, stopped at panic's first
-- instruction; every test starts there.
local linux = require("lunavm.linux")

budget = { time = "40s", wall = "600s" }

function setup_once()
  local f = linux.files()
  vm.boot{kernel = f.bzimage, mem = "256M", cmdline = linux.CMDLINE .. " root=/dev/vdz quiet"}
  local r, ev = linux.run_to_panic{timeout = "30s"}
  if not r then error("the kernel did not panic: " .. ev.reason .. "\n" .. serial.output()) end
end

function test_the_panic_breakpoint_hits_with_the_message()
  local k = linux.symbols()
  t.eq(cpu.get("rip"), k:addr("panic"))
  local r = linux.panic_report()
  t.eq(r.kind, "panic")
  -- panic(fmt, ...): the format from RDI, its argument from RSI.
  t.eq(r.format, "VFS: Unable to mount root fs on %s")
  t.eq(r.message, "VFS: Unable to mount root fs on unknown-block(0,0)")
  t.match(serial.output(), "/dev/root: Can't open blockdev")
  t.ok(not serial.output():find("Kernel panic"), "stopped before panic() printed anything")
  -- The kernel's own line, once it runs on.
  local ev = vm.run{serial = "Kernel panic - not syncing: [^\r\n]*\r?\n", time = "1s"}
  t.eq(ev.reason, "serial")
  t.match(ev.match, "Kernel panic %- not syncing: VFS: Unable to mount root fs on unknown%-block%(0,0%)",
    "printed as formatted")
end

function test_the_backtrace_is_symbolised()
  local r = linux.panic_report()
  local names = {}
  for _, f in ipairs(r.backtrace) do names[#names + 1] = f.name end
  t.eq(table.concat(names, " <- "), "panic <- mount_block_root <- mount_root <- prepare_namespace"
    .. " <- kernel_init_freeable <- kernel_init <- ret_from_fork")
  t.eq(r.backtrace[1].symbol, "panic")
  t.eq(r.backtrace[1].addr, cpu.get("rip"))
  t.eq(r.backtrace[2].addr, mem.vread64(cpu.get("rsp")), "the caller from the stack top")
  for _, f in ipairs(r.backtrace) do t.eq(f.addr >> 40, 0xffffff, f.symbol .. " in kernel text") end
end

-- The same frames as the kernel's own frame-pointer unwinder prints, offsets
-- included: run on to the end of its "Call Trace:".
function test_the_backtrace_matches_the_kernels_call_trace()
  local r = linux.panic_report()
  local ev = vm.run{serial = "</TASK>\r?\n", time = "1s"}
  t.eq(ev.reason, "serial")
  local theirs = linux.call_trace(serial.output())
  t.ok(theirs and #theirs > 0, "a Call Trace was printed")
  -- The kernel's trace starts inside panic (dump_stack...): compare from its caller on.
  local from
  for i, s in ipairs(theirs) do
    if s:find("^panic%+") then from = i + 1 end
  end
  t.ok(from, "panic in the kernel's trace:\n" .. table.concat(theirs, "\n"))
  local ours = {}
  for i = 2, #r.backtrace do ours[#ours + 1] = r.backtrace[i].symbol end
  t.eq(table.concat(ours, "\n"), table.concat(theirs, "\n", from))
end
