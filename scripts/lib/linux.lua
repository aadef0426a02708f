-- lunavm.linux: Linux guests. Boot a kernel to a milestone, turn the KTAP
-- output of KUnit suites into test results, resolve kernel symbols.
local linux = {}

--- Where scripts/linux/build-kernel.sh and build-initramfs.sh leave their
--- output: $LUNAVM_LINUX_DIR, else ~/.cache/lunavm/linux/out (or under
--- $LUNAVM_CACHE).
function linux.out_dir()
  local dir = os.getenv("LUNAVM_LINUX_DIR")
  if dir and dir ~= "" then return dir end
  local cache = os.getenv("LUNAVM_CACHE")
  if not cache or cache == "" then cache = (os.getenv("HOME") or "") .. "/.cache/lunavm" end
  return cache .. "/linux/out"
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- The test-suite kernel's files: {bzimage, vmlinux, system_map, initramfs}.
--- Errors, naming the build script, when they have not been built.
function linux.files(kind)
  local out = linux.out_dir()
  local files = {
    bzimage = out .. "/lunavm/bzImage",
    vmlinux = out .. "/lunavm/vmlinux",
    system_map = out .. "/lunavm/System.map",
    initramfs = out .. "/initramfs-" .. (kind or "idle") .. ".cpio",
  }
  for _, path in pairs(files) do
    if not exists(path) then
      error("Linux test files are missing (" .. path .. "): run scripts/linux/build-kernel.sh and "
        .. "scripts/linux/build-initramfs.sh first, or set LUNAVM_LINUX_DIR", 2)
    end
  end
  return files
end

--- Debian's stock cloud kernel as scripts/linux/fetch-cloud-kernel.sh left
--- it (the version it fetched last): {bzimage, system_map, initramfs,
--- version}. Its initramfs is the busybox shell one, loading virtio_mmio and
--- virtio_blk from the kernel package before the shell starts. Errors,
--- naming the script, when it has not been run. Pass it to linux.boot or
--- linux.boot_shell as `files`.
function linux.cloud_files()
  local index = linux.out_dir() .. "/cloud/current"
  local f = io.open(index, "r")
  if not f then
    error("Debian's cloud kernel is missing (" .. index .. "): run scripts/linux/fetch-cloud-kernel.sh first", 2)
  end
  local info = {}
  for line in f:lines() do
    local k, v = line:match("^([%w_]+)=(.*)$")
    if k then info[k] = v end
  end
  f:close()
  local files = {
    bzimage = info.kernel, system_map = info.system_map,
    initramfs = info.initramfs, version = info.version,
  }
  for _, key in ipairs({ "bzimage", "system_map", "initramfs" }) do
    if not files[key] or not exists(files[key]) then
      error("Debian's cloud kernel is incomplete (" .. tostring(files[key]) .. " from " .. index
        .. "): run scripts/linux/fetch-cloud-kernel.sh again", 2)
    end
  end
  return files
end

--- The command line of the deterministic platform: serial console, PIC and
--- PIT only, the TSC hidden from the kernel (`clearcpuid=tsc`: no TSC
--- calibration against the PIT, jiffies for sched_clock and the clocksource)
--- and a preset delay-loop calibration (`lpj=`: calibrate_delay's loop would
--- wait for jiffies without exits), a panic stops the machine. With it the
--- boot repeats exactly (exits and console) up to "Run /init" (README,
--- "Determinism"). lunavm adds nokaslr and what hides the CPU profile's
--- features itself (merging this clearcpuid= into its own).
linux.CMDLINE = "console=ttyS0 nolapic noapic clearcpuid=tsc lpj=10000 panic=-1"

--- Boots the test-suite kernel with the idle initramfs and runs it until
--- "Run /init" appears (virtual-time `timeout`, default "30s"). `opts` adds
--- to vm.boot's options (cmdline is appended to linux.CMDLINE);
--- `opts.initramfs` names another initramfs of the test kernel ("shell"),
--- `opts.files` another kernel altogether ({bzimage, initramfs}, e.g.
--- linux.cloud_files()). Returns the serial output up to that point.
function linux.boot(opts)
  opts = opts or {}
  local f = opts.files or linux.files(opts.initramfs)
  local boot = {}
  for k, v in pairs(opts) do boot[k] = v end
  boot.kernel = f.bzimage
  boot.modules = { f.initramfs }
  boot.mem = opts.mem or "256M"
  boot.cmdline = linux.CMDLINE .. (opts.cmdline and (" " .. opts.cmdline) or "")
  boot.initramfs, boot.timeout, boot.files = nil, nil, nil
  vm.boot(boot)
  serial.expect("Run /init as init process\r?\n", opts.timeout or "30s")
  return serial.output()
end

--- The KUnit results in `output` (KTAP, as the kernel prints them at boot):
--- one {name, status ("pass", "fail" or "skip"), message} per suite, in order.
function linux.kunit_results(output)
  local results = {}
  for line in output:gmatch("[^\r\n]+") do
    local not_ok, n, rest = line:match("^(n?o?t? ?)ok (%d+) (.*)$")
    if n then
      local name, directive = rest:match("^(.-)%s*#%s*(.*)$")
      name = name or rest
      local status = (not_ok ~= "" and "fail") or "pass"
      if directive and directive:upper():find("^SKIP") then status = "skip" end
      results[#results + 1] = { name = name, status = status, message = directive or "" }
    end
  end
  return results
end

--- Reports every KUnit suite in `output` as a result of the running test
--- (`t.result`); returns how many failed.
function linux.report_kunit(output)
  local failed = 0
  for _, r in ipairs(linux.kunit_results(output)) do
    t.result(r.name, r.status, r.message)
    if r.status == "fail" then failed = failed + 1 end
  end
  return failed
end

-- Symbol tables loaded once per Lua state, by path.
local loaded_symbols = {}

local function symbols_of(path)
  local s = loaded_symbols[path]
  if not s then
    s = sym.load(path)
    loaded_symbols[path] = s
  end
  return s
end

--- The address of kernel symbol `name` from a System.map file (loaded once
--- per test with sym.load).
function linux.symbol(system_map, name)
  local addr = symbols_of(system_map):lookup(name)
  if not addr then error("no symbol " .. name .. " in " .. system_map, 2) end
  return addr
end

-- ---------------------------------------------------------------------------
-- Kernel-mode scenarios (issue 9 point 3): the kernel's symbol table, a
-- panic or oops caught by breakpoints, a root file system on a virtio disk,
-- the kernel's own IP autoconfiguration.
-- ---------------------------------------------------------------------------

--- The test kernel's symbol table (sym.load of its vmlinux: ELF symbols with
--- sizes), loaded once per test.
function linux.symbols()
  return symbols_of(linux.files().vmlinux)
end

--- The root-disk image scripts/linux/build-rootfs.sh builds (ext2, /init is
--- the idle init); errors, naming the script, when it is missing.
function linux.rootfs()
  local path = linux.out_dir() .. "/rootfs-idle.ext2"
  if not exists(path) then
    error("the root disk is missing (" .. path .. "): run scripts/linux/build-rootfs.sh first, "
      .. "or set LUNAVM_LINUX_DIR", 2)
  end
  return path
end

--- The guest's network as linux.boot_rootfs configures it with the kernel's
--- `ip=`: the guest's address, the host's (gateway) address, the netmask.
linux.NET = { guest = "10.0.2.15", host = "10.0.2.2", mask = "255.255.255.0" }

--- Boots the test-suite kernel without an initramfs, its root file system
--- the ext2 image of linux.rootfs() on the first virtio disk (`root=/dev/vda
--- init=/init`, mounted read-only; the disk's writes go to lunavm's overlay),
--- and with a virtio-net card configured by the kernel itself (`ip=`, see
--- linux.NET; `net=false` leaves it out), until "Run /init" (virtual-time
--- `timeout`, default "40s"). `opts` adds to vm.boot's options (`cmdline`
--- is appended; `disks` come after the root disk). Returns the serial output.
function linux.boot_rootfs(opts)
  opts = opts or {}
  local f = linux.files()
  local boot = {}
  for k, v in pairs(opts) do boot[k] = v end
  boot.kernel = f.bzimage
  boot.disks = { linux.rootfs() }
  for _, d in ipairs(opts.disks or {}) do boot.disks[#boot.disks + 1] = d end
  boot.net = opts.net ~= false
  boot.mem = opts.mem or "256M"
  local n = linux.NET
  boot.cmdline = linux.CMDLINE .. " root=/dev/vda init=/init"
    .. (boot.net and string.format(" ip=%s::%s:%s::eth0:off", n.guest, n.host, n.mask) or "")
    .. (opts.cmdline and (" " .. opts.cmdline) or "")
  boot.timeout = nil
  vm.boot(boot)
  serial.expect("Run /init as init process\r?\n", opts.timeout or "40s")
  return serial.output()
end

local ARG_REGS = { "rsi", "rdx", "rcx", "r8", "r9" }

--- `fmt` (a kernel printf format read from guest memory) with its arguments
--- taken from the registers of a varargs call stopped at its entry (RSI, RDX,
--- RCX, R8, R9, then the stack): %s %d %i %u %x %X %c %p and their l/ll/z/h
--- forms; %p with a kernel extension (%pS...) prints the pointer in hex.
function linux.format_args(fmt)
  local n = 0
  local function arg()
    n = n + 1
    if n <= #ARG_REGS then return cpu.get(ARG_REGS[n]) end
    return mem.vread64(cpu.get("rsp") + 8 * (n - #ARG_REGS))
  end
  return (fmt:gsub("%%([-+ #0]*%d*%.?%d*)([hlzjt]*)([%a%%])", function(flags, len, conv)
    if conv == "%" then return "%" end
    if conv == "s" then
      local ok, str = pcall(mem.vread_cstr, arg(), 1024)
      return ok and str or "(efault)"
    end
    local v = arg()
    if conv == "p" then return string.format("0x%x", v) end
    if conv == "c" then return string.char(v & 0xff) end
    if len == "" or len == "h" or len == "hh" then
      v = v & 0xffffffff
      if (conv == "d" or conv == "i") and v >= 0x80000000 then v = v - 0x100000000 end
    end
    if conv == "d" or conv == "i" then return string.format("%" .. flags .. "d", v) end
    if conv == "u" then
      -- Unsigned decimal of a 64-bit value: exact, for values Lua sees as negative too.
      local q = (v >> 1) // 5
      local digits = (q ~= 0 and tostring(q) or "") .. tostring(v - q * 10)
      return string.format("%" .. flags .. "s", digits)
    end
    if conv == "x" or conv == "X" then return string.format("%" .. flags .. conv, v) end
    return "%" .. flags .. len .. conv
  end))
end

--- Runs the kernel until it panics or oopses, with breakpoints on `panic`
--- and `__die` (which every oops and die() goes through), within `timeout`
--- of virtual time (default "30s"). Returns a report, or nil and the vm.run
--- event when the kernel stopped for another reason:
---   {kind = "panic", func = "panic", format = FMT, message = TEXT, backtrace = FRAMES}
---   {kind = "oops", func = "__die", message = "Oops"..., regs = {rip, rsp, rbp, ...},
---    backtrace = FRAMES (from __die), fault_backtrace = FRAMES (from the faulting RIP)}
--- FRAMES as sym.backtrace gives them. The machine stays stopped at the
--- function's first instruction: vm.run continues into it.
function linux.run_to_panic(opts)
  opts = opts or {}
  local k = opts.symbols or linux.symbols()
  local panic, die = k:addr("panic"), k:addr("__die")
  local ev = vm.run{ breakpoint = { panic, die }, time = opts.timeout or "30s" }
  if ev.reason ~= "breakpoint" then return nil, ev end
  return linux.panic_report(k), ev
end

-- struct pt_regs (x86-64) field offsets.
local PT_REGS = { rbp = 32, rax = 80, rcx = 88, rdx = 96, rsi = 104, rdi = 112, rip = 128,
  cs = 136, rflags = 144, rsp = 152 }

--- The report of linux.run_to_panic for a machine stopped at the first
--- instruction of `panic` or `__die` (see there).
function linux.panic_report(k)
  k = k or linux.symbols()
  local rip = cpu.get("rip")
  if rip == k:addr("panic") then
    local fmt = mem.vread_cstr(cpu.get("rdi"), 1024)
    return { kind = "panic", func = "panic", format = fmt, message = linux.format_args(fmt),
      backtrace = k:backtrace() }
  elseif rip == k:addr("__die") then
    -- __die(const char *str, struct pt_regs *regs, long err)
    local base, regs = cpu.get("rsi"), {}
    for name, off in pairs(PT_REGS) do regs[name] = mem.vread64(base + off) end
    return { kind = "oops", func = "__die", message = mem.vread_cstr(cpu.get("rdi"), 256),
      error_code = cpu.get("rdx"), regs = regs, backtrace = k:backtrace(),
      fault_backtrace = k:backtrace{ rip = regs.rip, rsp = regs.rsp, rbp = regs.rbp } }
  end
  error(string.format("linux.panic_report: the machine is not at panic or __die (rip 0x%x, %s)",
    rip, k:resolve(rip) or "?"), 2)
end

--- The frames of a backtrace as text, one `symbol` per line (the form the
--- kernel prints, without its sizes).
function linux.format_backtrace(frames)
  local lines = {}
  for _, f in ipairs(frames) do lines[#lines + 1] = f.symbol end
  return table.concat(lines, "\n")
end

--- The kernel's own "Call Trace:" in `output` (after the last one): its
--- reliable frames ("? " guesses left out) as `name+0x12`, sizes cut.
function linux.call_trace(output)
  local trace = output:match(".*Call Trace:\r?\n(.-)\n[^\n]*</TASK>")
  if not trace then return nil end
  local frames = {}
  for line in trace:gmatch("[^\r\n]+") do
    local sym = line:match("^%s+([%w_.]+%+0x%x+)/0x%x+%s*$")
    if sym then frames[#frames + 1] = sym end
  end
  return frames
end

-- User mode: the busybox shell of the "shell" initramfs
-- (scripts/linux/build-initramfs.sh --kind shell). Guest user mode needs
-- lunavm's SYSCALL compatibility path on software-nested KVM (on by itself
-- where the host needs it; vm.syscall_compat() says what it did).

-- Commands sent so far in this Lua state: numbers the markers.
local shell_seq = 0

--- Boots the test-suite kernel with the shell initramfs (`opts` as for
--- linux.boot; `opts.initramfs` defaults to "shell", `opts.files` boots
--- another kernel and its shell initramfs) and waits until the
--- shell runs commands (linux.shell_wait). Returns the serial output so far.
function linux.boot_shell(opts)
  opts = opts or {}
  local boot = {}
  for k, v in pairs(opts) do boot[k] = v end
  boot.initramfs = opts.initramfs or "shell"
  boot.shell_timeout = nil
  linux.boot(boot)
  linux.shell_wait(opts.shell_timeout)
  return serial.output()
end

--- Waits for the shell initramfs' /init to start the shell
--- ("lunavm-init: shell on ...") and for the shell to run a first command
--- (virtual-time `timeout`, default "30s").
function linux.shell_wait(timeout)
  serial.expect("lunavm-init: shell on \\S*\r?\n", timeout or "30s")
  linux.shell_run(":", { timeout = timeout or "30s" })
end

--- Runs `cmd` (one line of shell) in the guest's shell on the serial
--- console and returns its output (lines joined with "\n", CRs removed,
--- without the last newline) and its exit status ($?).
--- The command is wrapped as `echo BEGIN; cmd ; echo END:$?` (so it must
--- be a list that `;` can follow: not ending in `&` or `;`) with markers
--- numbered per call and quoted so that the terminal's echo of the typed
--- line never matches them; output is everything between the two. No
--- sleeps: it runs the guest until the end marker appears, within
--- `opts.timeout` of virtual time (default "10s"), else errors with the
--- unread output. The command must not read the console (use </dev/null).
function linux.shell_run(cmd, opts)
  opts = opts or {}
  if cmd:find("[\r\n]") then error("linux.shell_run: one line only: " .. cmd, 2) end
  shell_seq = shell_seq + 1
  local tag = "lunavm-" .. shell_seq
  serial.write(string.format("echo '@@%s''-begin@@'; %s ; echo '@@%s''-end:'$?'@@'\n", tag, cmd, tag))
  local ok, m = pcall(serial.expect,
    "(?s)@@" .. tag .. "-begin@@\r?\n.*?@@" .. tag .. "-end:\\d+@@", opts.timeout or "10s")
  if not ok then error("linux.shell_run(" .. cmd .. "): " .. tostring(m), 2) end
  local body, status = m:match("^@@[^@]*%-begin@@\r?\n(.*)@@[^@]*%-end:(%d+)@@$")
  body = body:gsub("\r", "")
  if body:sub(-1) == "\n" then body = body:sub(1, -2) end
  return body, tonumber(status)
end

--- Runs `cmd` like linux.shell_run and fails the test unless it exits 0;
--- returns its output.
function linux.shell_check(cmd, opts)
  local out, status = linux.shell_run(cmd, opts)
  if status ~= 0 then
    error(string.format("linux.shell_check(%s): exit status %d, output:\n%s", cmd, status, out), 2)
  end
  return out
end

return linux
