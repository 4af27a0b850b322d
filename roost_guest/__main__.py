from roost_guest.agent import main

main()
