-- Address translation in every paging mode the built-in guests use:
-- mb_paging (32-bit multiboot: paging off, 32-bit with 4 MiB pages, PAE with
-- 2 MiB pages, each with one 4 KiB alias page) and poke (4-level paging).
-- mem.translate's info fields, and virtual reads and writes the guest sees.
local guest = require("lunavm.guest")
local hex = require("lunavm.hex")

budget = { time = "1s", wall = "20s" }

local ALIAS_VA = 0xC0400000
local PAGING_REFUSED = 0x5e

-- Boots mb_paging in `mode` and runs to its SYNC(1, alias VA, alias PA, CR3).
-- Skips the test on hosts whose KVM refuses paging outside long mode (the
-- guest reports #GP on setting CR0.PG and exits 0x5e).
local function boot_mode(mode)
  vm.boot{guest = "mb_paging", cmdline = "mode=" .. mode}
  local ev = vm.run{sync = 1}
  if ev.reason == "exit" and ev.status == PAGING_REFUSED then
    t.skip(string.format("host limitation: this host's KVM refuses paging outside long mode "
      .. "(software-nested kvm_pvm: #GP on setting CR0.PG), so mb_paging mode=%s cannot run "
      .. "(it exited 0x5e: %s)", mode, (serial.output():gsub("\n$", ""))))
  end
  t.eq(ev.reason, "sync", "mb_paging mode=" .. mode)
  return ev.args[2], ev.args[3], ev.args[4]
end

-- Writes a new string through the alias VA and checks the guest reads it back
-- through its own page tables.
local function check_alias_write(mode, va, pa)
  mem.vwrite_cstr(va, "written by lua")
  t.eq(mem.read_cstr(pa), "written by lua", "the write reached the physical page")
  guest.finish(0)
  guest.expect_line(string.format("mb_paging: mode %s: written by lua", mode))
end

function test_paging_off()
  local va, pa = boot_mode("off")
  t.eq(cpu.get("cr0") & 0x80000000, 0, "CR0.PG clear")
  t.eq(va, pa, "no translation: the alias VA is alias_page itself")
  local p, info = mem.translate(va)
  t.eq(p, pa)
  t.eq(info.page_size, 4096)
  t.eq(info.writable, true)
  t.eq(info.user, true)
  t.eq(info.executable, true)
  -- Linear addresses are 32 bits wide here.
  t.eq(mem.translate(0x123456789), 0x23456789)
  t.eq(mem.vread_cstr(va), "mb alias page")
  check_alias_write("off", va, pa)
end

function test_paging_32bit()
  local va, pa, cr3 = boot_mode("32")
  t.eq(va, ALIAS_VA)
  t.eq(cpu.get("cr3"), cr3)
  t.neq(cpu.get("cr0") & 0x80000000, 0, "CR0.PG")
  t.neq(cpu.get("cr4") & 0x10, 0, "CR4.PSE")
  t.eq(cpu.get("cr4") & 0x20, 0, "no CR4.PAE")
  -- The alias: a 4 KiB page in a page table.
  local p, info = mem.translate(va + 0x10)
  t.eq(p, pa + 0x10)
  t.eq(info.page_size, 4096)
  t.eq(info.writable, true)
  t.eq(info.user, false)
  t.eq(info.executable, true, "no NX without PAE")
  -- Everything else: identity-mapped 4 MiB pages.
  p, info = mem.translate(0x00500123)
  t.eq(p, 0x00500123)
  t.eq(info.page_size, 4 << 20)
  t.eq(mem.vread_cstr(va), "mb alias page")
  check_alias_write("32", va, pa)
end

function test_paging_pae()
  local va, pa, cr3 = boot_mode("pae")
  t.eq(va, ALIAS_VA)
  t.eq(cpu.get("cr3"), cr3)
  t.neq(cpu.get("cr4") & 0x20, 0, "CR4.PAE")
  t.eq(cpu.get("efer") & 0x400, 0, "not long mode")
  local p, info = mem.translate(va)
  t.eq(p, pa)
  t.eq(info.page_size, 4096)
  t.eq(info.writable, true)
  t.eq(info.user, false)
  p, info = mem.translate(0x00300456)
  t.eq(p, 0x00300456)
  t.eq(info.page_size, 2 << 20)
  t.eq(mem.vread_cstr(va), "mb alias page")
  check_alias_write("pae", va, pa)
end

-- poke's high alias: PML4 entry 256, a 4 KiB page, its own page tables.
function test_poke_alias_4level()
  local ev = guest.boot_to_sync({guest = "poke"}, 3)
  local va, pa = ev.args[2], ev.args[3]
  t.neq(cpu.get("efer") & 0x400, 0, "long mode")
  t.eq(cpu.get("cr4") & 0x1000, 0, "4-level, not 5-level (CR4.LA57 clear)")
  local p, info = mem.translate(va)
  t.eq(p, pa)
  t.eq(info.page_size, 4096)
  t.eq(info.writable, true, "PTE_W")
  t.eq(info.user, false, "no PTE_U")
  t.eq(info.executable, true, "no NX bit")
  -- The boot identity map uses large pages.
  p, info = mem.translate(pa)
  t.eq(p, pa)
  t.ok(info.page_size == 2 << 20 or info.page_size == 1 << 30, hex.u(info.page_size))
  -- Next to the alias nothing is mapped; non-canonical addresses neither.
  local none, why = mem.translate(va + 0x1000)
  t.eq(none, nil)
  t.ok(why:find("not mapped", 1, true), why)
  none, why = mem.translate(0x0000800000000000)
  t.eq(none, nil)
  t.eq(type(why), "string")
  mem.vwrite_cstr(va, "four levels")
  guest.run_to_sync(4)
  guest.expect_line("alias: four levels")
end
