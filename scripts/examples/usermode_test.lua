-- The usermode guest checks the transitions an OS needs between user mode
-- and its kernel (sysretq, syscall, int $0x80), and lunavm's SYSCALL
-- compatibility path (vm.boot{syscall_compat=}, vm.syscall_compat()).
local guest = require("lunavm.guest")

budget = { time = "2s", wall = "30s" }

local function run(mode, cmdline)
  vm.boot{ guest = "usermode", cmdline = cmdline, syscall_compat = mode }
  local ev = vm.run{}
  t.eq(ev.reason, "exit")
  return ev.status, vm.syscall_compat()
end

function test_syscall_and_sysret_work_with_the_default_mode()
  local status, c = run(nil, "only=syscall rounds=3")
  t.eq(status, 0, "failed checks")
  t.eq(c.mode, "auto")
  t.eq(#guest.lines(), 4)
  guest.expect_line("usermode: syscall: ok (entry cs 0x10 ss 0x18 rflags 0x3)")
  -- The probe decided; each syscall was finished by lunavm only if it needed to be.
  t.eq(c.active, c.probe_syscall ~= "works")
  t.eq(c.completed, c.active and 3 or 0)
  t.eq(c.page_faults, 0, "no other page fault in this guest")
  t.eq(c.probe_sysret, "works")
end

function test_returning_with_iretq_and_sysretq_from_cpl0()
  local status = run("auto", "only=syscall-iret")
  t.eq(status, 0)
  guest.expect_line("usermode: syscall-iret: ok (entry cs 0x10 ss 0x18 rflags 0x3)")
end

function test_sysret_from_the_kernel()
  local status = run("auto", "only=sysret")
  t.eq(status, 0)
  guest.expect_line("usermode: sysret: ok (cs 0x33, rflags 0x603)")
end

function test_off_shows_what_the_host_does()
  local status, c = run("off", "only=syscall")
  t.eq(c.active, false)
  t.eq(c.completed, 0)
  if c.probe_syscall == "works" then
    t.eq(status, 0)
  else
    -- The guest sees the host's fault: a #PF fetching LSTAR at CPL3.
    t.eq(status, 1)
    guest.expect_line("usermode: syscall: FAIL: syscall stayed at CPL3 (#PF at LSTAR)")
  end
end

function test_on_forces_the_path_and_it_stays_correct()
  local status, c = run("on", "only=syscall rounds=2")
  t.eq(status, 0)
  t.eq(c.active, true)
  t.ok(c.handler ~= nil, "a breakpoint on the guest's #PF handler")
  t.eq(c.completed, 2)
end

function test_int80_from_user_mode_is_reported()
  -- int $0x80 is not completed: on software-nested KVM it raises #UD
  -- (Linux x86-64 without IA32_EMULATION has no such gate anyway).
  local status = run("auto", "only=int80")
  if status == 0 then
    guest.expect_line("usermode: int80: ok")
  else
    guest.expect_line("usermode: int80: FAIL: int $0x80 raised #UD")
  end
end
