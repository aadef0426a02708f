-- The vCPU: registers, segments, MSRs and event injection (cpu.*), checked
-- through what the `poke` guest prints after each sync point.
local guest = require("lunavm.guest")
local hex = require("lunavm.hex")

budget = { time = "1s", wall = "20s" }

-- Every name cpu.get, cpu.set and cpu.regs know.
local REGS = {
  "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
  "r11", "r12", "r13", "r14", "r15", "rip", "rflags", "cs", "ds", "es", "fs",
  "gs", "ss", "fs_base", "gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer",
}

-- Step 4: the guest zeroes RBX and R12, sends SYNC(4) and prints both right
-- after the `out`, so values set at the sync point are what it prints.
function test_set_registers()
  local ev = guest.boot_to_sync({guest = "poke"}, 4)
  t.eq(cpu.get("rbx"), 0)
  t.eq(cpu.get("r12"), 0)
  t.eq(cpu.get("rip"), ev.rip)
  cpu.set("rbx", 0xabc)
  cpu.set("r12", -1)
  t.eq(cpu.get("rbx"), 0xabc)
  t.eq(cpu.regs().r12, -1)
  guest.run_to_sync(5)
  guest.expect_line("rbx: 0xabc r12: 0xffffffffffffffff")
end

function test_regs_table()
  guest.boot_to_sync({guest = "poke"}, 4)
  cpu.set("r13", 0x1313)
  local r = cpu.regs()
  for _, name in ipairs(REGS) do
    t.eq(math.type(r[name]), "integer", "cpu.regs()." .. name)
    t.eq(r[name], cpu.get(name), name)
  end
  t.eq(r.r13, 0x1313)
  -- 64-bit long mode with paging: CR0.PG, EFER.LMA, a 64-bit code segment.
  t.neq(r.cr0 & 0x80000000, 0, "CR0.PG")
  t.neq(r.efer & 0x400, 0, "EFER.LMA")
  t.eq(r.cs, cpu.segment("cs").selector)
  t.ok(guest.expect_error(cpu.get, "xmm0"):find("Unknown register", 1, true))
end

function test_segments()
  guest.boot_to_sync({guest = "poke"}, 1)
  local cs = cpu.segment("cs")
  t.eq(cs.l, 1, "64-bit code segment")
  t.eq(cs.present, 1)
  t.eq(cs.dpl, 0)
  t.eq(cs.s, 1)
  t.eq(cpu.segment("tr").type, 11, "busy 64-bit TSS")
  for _, name in ipairs{"ds", "es", "fs", "gs", "ss", "ldt"} do
    local sg = cpu.segment(name)
    for _, f in ipairs{"selector", "base", "limit", "type", "dpl", "present", "db", "s", "l", "g"} do
      t.eq(math.type(sg[f]), "integer", name .. "." .. f)
    end
  end

  -- set_segment changes only the fields given; fs_base and gs_base are the
  -- same hidden bases.
  local before = cpu.segment("fs")
  cpu.set_segment("fs", {base = 0x12345000})
  local fs = cpu.segment("fs")
  t.eq(fs.base, 0x12345000)
  t.eq(fs.selector, before.selector)
  t.eq(fs.limit, before.limit)
  t.eq(cpu.get("fs_base"), 0x12345000)
  cpu.set("gs_base", 0x5000)
  t.eq(cpu.segment("gs").base, 0x5000)
  -- They stay while the guest runs (it does not touch FS or GS).
  guest.run_to_sync(2)
  t.eq(cpu.get("fs_base"), 0x12345000)
  t.eq(cpu.segment("gs").base, 0x5000)
  t.ok(guest.expect_error(cpu.set_segment, "fs", {colour = 1}):find("unknown segment field", 1, true))
end

-- Step 5: the guest wrote 0x10 to IA32_SYSENTER_CS and prints what it reads.
function test_msrs()
  guest.boot_to_sync({guest = "poke"}, 5)
  t.eq(cpu.rdmsr(0x174), 0x10)
  cpu.wrmsr(0x174, 0x1234)
  t.eq(cpu.rdmsr(0x174), 0x1234)
  guest.run_to_sync(6)
  guest.expect_line("msr 0x174: 0x1234")
  t.neq(cpu.rdmsr(0xc0000080) & 0x400, 0, "EFER.LMA through the MSR")
  t.ok(guest.expect_error(cpu.rdmsr, 0x12345678):find("cannot be accessed", 1, true))
end

-- Step 6: interrupts are on, vector 0x40 has a counting handler and an
-- expected #UD is armed.
function test_inject_interrupt()
  guest.boot_to_sync({guest = "poke"}, 6)
  t.neq(cpu.get("rflags") & 0x200, 0, "RFLAGS.IF")
  cpu.inject_interrupt(0x40)
  guest.run_to_sync(7)
  guest.expect_line("interrupt 0x40: 1")
  guest.expect_line("exception: -1")
end

function test_inject_exception()
  guest.boot_to_sync({guest = "poke"}, 6)
  cpu.inject_exception(6) -- #UD
  guest.run_to_sync(7)
  guest.expect_line("interrupt 0x40: 0")
  guest.expect_line("exception: 6")
end

-- With an error code: nothing expects a #GP at step 1, so the runtime reports
-- it, with the code, and exits with 0x70 + 13.
function test_inject_exception_with_error_code()
  guest.boot_to_sync({guest = "poke"}, 1)
  cpu.inject_exception(13, 0x1234)
  local ev = vm.run{}
  t.eq(ev.reason, "exit")
  t.eq(ev.status, 0x70 + 13)
  t.ok(serial.output():find("unexpected exception 13 (#GP) error=0x1234", 1, true), serial.output())
end

function test_injection_errors()
  guest.boot_to_sync({guest = "poke"}, 5)
  t.eq(cpu.get("rflags") & 0x200, 0, "interrupts are off at step 5")
  t.ok(guest.expect_error(cpu.inject_interrupt, 0x40):find("interrupts disabled", 1, true))
  t.ok(guest.expect_error(cpu.inject_interrupt, 6):find("out of range", 1, true))
  t.ok(guest.expect_error(cpu.inject_exception, 32):find("out of range", 1, true))
  -- None of them queued anything: step 6 sees no event.
  guest.run_to_sync(7)
  guest.expect_line("interrupt 0x40: 0")
  guest.expect_line("exception: -1")
  t.eq(hex.u(cpu.rdmsr(0x174)), "0x10")
end
