function test_hello_greets_and_exits()
  vm.boot{guest = "hello", cmdline = "status=3"}
  t.eq(serial.expect("guest '\\w+'"), "guest 'hello'")   -- a Rust regex
  local ev = vm.run{}                      -- to the guest's exit
  t.eq(ev.reason, "exit")
  t.eq(ev.status, 3)
end
