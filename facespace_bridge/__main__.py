from facespace_bridge.cli import main

main()
