from chinook.local_stores.embedded import main

main()
