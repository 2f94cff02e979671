module keyturn.test/runtimes/agent

go 1.19
