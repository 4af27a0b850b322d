from roost.cli.entry import main

main()
