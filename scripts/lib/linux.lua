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

--- The command line of the deterministic platform: serial console, PIC and
--- PIT only, the TSC not trusted, a panic stops the machine. lunavm adds
--- nokaslr and what hides the CPU profile's features itself.
linux.CMDLINE = "console=ttyS0 nolapic noapic tsc=unstable panic=-1"

--- Boots the test-suite kernel with the idle initramfs and runs it until
--- "Run /init" appears (virtual-time `timeout`, default "30s"). `opts` adds
--- to vm.boot's options (cmdline is appended to linux.CMDLINE). Returns the
--- serial output up to that point.
function linux.boot(opts)
  opts = opts or {}
  local f = linux.files(opts.initramfs)
  local boot = {}
  for k, v in pairs(opts) do boot[k] = v end
  boot.kernel = f.bzimage
  boot.modules = { f.initramfs }
  boot.mem = opts.mem or "256M"
  boot.cmdline = linux.CMDLINE .. (opts.cmdline and (" " .. opts.cmdline) or "")
  boot.initramfs, boot.timeout = nil, nil
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

--- The address of kernel symbol `name` from a System.map file.
function linux.symbol(system_map, name)
  for line in io.lines(system_map) do
    local addr, _, sym = line:match("^(%x+) (%a) (%S+)$")
    if sym == name then return tonumber(addr, 16) end
  end
  error("no symbol " .. name .. " in " .. system_map, 2)
end

-- User mode: the busybox shell of the "shell" initramfs
-- (scripts/linux/build-initramfs.sh --kind shell). Guest user mode needs
-- lunavm's SYSCALL compatibility path on software-nested KVM (on by itself
-- where the host needs it; vm.syscall_compat() says what it did).

-- Commands sent so far in this Lua state: numbers the markers.
local shell_seq = 0

--- Boots the test-suite kernel with the shell initramfs (`opts` as for
--- linux.boot; `opts.initramfs` defaults to "shell") and waits until the
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
